"""The small binary classifier behind the prompt screen and the motion judge: standardised inputs, a one-hidden-layer
MLP, and Platt scaling fitted on held-out data so that its output is a calibrated probability.

    p(x) = σ(a · mlp((x − μ) / σ) + b)

Training minimises class-balanced binary cross-entropy (each class weighs half, so a rare concept is not ignored) with
Adam and weight decay, full batch, seeded. The weights, μ, σ and (a, b) are stored in one safetensors file whose
metadata names the component, the concept and the input layout (`kind`, `layout`), checked at load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from safemotion.atomic_dir import write_bytes_atomic


@dataclass(frozen=True)
class TrainSettings:
    """How the classifier is fitted."""

    hidden: int = 32
    epochs: int = 400
    lr: float = 1e-2
    weight_decay: float = 1e-3
    seed: int = 0


class SmallClassifier(nn.Module):
    """Standardise → Linear → ReLU → Linear → Platt-scaled sigmoid."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("platt", torch.tensor([1.0, 0.0]))
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    @property
    def dim(self) -> int:
        return self.mean.numel()

    def logits(self, x: Tensor) -> Tensor:
        """Uncalibrated logits (N,) of inputs (N, dim)."""
        return self.net((x - self.mean) / self.scale).squeeze(-1)

    @torch.no_grad()
    def probabilities(self, x: np.ndarray | Tensor) -> np.ndarray:
        """Calibrated probabilities (N,) of inputs (N, dim)."""
        x = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, Tensor) else x.float())
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"classifier input has shape {list(x.shape)}, expected [N, {self.dim}]")
        a, b = self.platt
        return torch.sigmoid(a * self.logits(x) + b).numpy().astype(np.float64)


def fit_classifier(x: np.ndarray, y: np.ndarray, settings: TrainSettings = TrainSettings()) -> SmallClassifier:
    """A classifier fitted on inputs x (N, dim) and 0/1 labels y (both classes needed); Platt scaling left at (1, 0)."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    positives, negatives = int(y.sum()), int((1 - y).sum())
    if positives == 0 or negatives == 0:
        raise ValueError(f"training needs both classes, got {positives} positive and {negatives} negative examples")
    torch.manual_seed(settings.seed)
    model = SmallClassifier(x.shape[1], settings.hidden)
    model.mean.copy_(torch.from_numpy(x.mean(0)))
    model.scale.copy_(torch.from_numpy(np.maximum(x.std(0), 1e-6)))
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
    weights = torch.where(labels > 0, 0.5 / positives, 0.5 / negatives)
    optimizer = torch.optim.Adam(model.net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    for _ in range(settings.epochs):
        optimizer.zero_grad()
        loss = (nn.functional.binary_cross_entropy_with_logits(model.logits(inputs), labels, reduction="none")
                * weights).sum()
        loss.backward()
        optimizer.step()
    return model.eval()


def fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 300, nonnegative: bool = False) -> tuple[np.ndarray, float]:
    """(w, b) of the class-balanced logistic regression p = σ(x·w + b) on inputs (N, d) and 0/1 labels; with
    `nonnegative` every w ≥ 0 (w = softplus(v)), so no input can lower the probability as it grows."""
    x_t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    y_t = torch.as_tensor(np.asarray(y, dtype=np.float32))
    positives, negatives = float(y_t.sum()), float((1 - y_t).sum())
    if positives == 0 or negatives == 0:
        raise ValueError(f"calibration needs both classes, got {positives:.0f} positive and {negatives:.0f} negative "
                         "examples")
    weights = torch.where(y_t > 0, 0.5 / positives, 0.5 / negatives)
    params = torch.zeros(x_t.shape[1] + 1, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], max_iter=steps, line_search_fn="strong_wolfe")

    def weights_of(p: Tensor) -> Tensor:
        return nn.functional.softplus(p[:-1]) if nonnegative else p[:-1]

    def closure() -> Tensor:
        optimizer.zero_grad()
        logits = x_t @ weights_of(params) + params[-1]
        loss = (nn.functional.binary_cross_entropy_with_logits(logits, y_t, reduction="none") * weights).sum()
        loss = loss + 1e-4 * weights_of(params).square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return weights_of(params).numpy().astype(np.float64), float(params[-1])


def fit_platt(model: SmallClassifier, x: np.ndarray, y: np.ndarray) -> None:
    """Fit (a, b) of p = σ(a·logit + b) on held-out inputs and labels (class-balanced, as the training)."""
    with torch.no_grad():
        logits = model.logits(torch.as_tensor(np.asarray(x, dtype=np.float32))).numpy()
    w, b = fit_logistic(logits[:, None], y)
    model.platt.copy_(torch.tensor([w[0], b]))


def save_classifier(model: SmallClassifier, path: str | Path, kind: str, concept: str, layout: dict) -> Path:
    """Write the classifier with its kind, concept and input layout as metadata (atomically)."""
    path = Path(path)
    tensors = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    metadata = {"kind": kind, "concept": concept, "layout": json.dumps(layout, sort_keys=True),
                "hidden": str(model.net[0].out_features)}
    write_bytes_atomic(path, safetensors_bytes(tensors, metadata=metadata))
    return path


def load_classifier(path: str | Path, kind: str) -> tuple[SmallClassifier, str, dict]:
    """(classifier, concept, layout) from a file written by save_classifier; a wrong or broken file raises."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {kind} file; train it with `safemotion unlearn screens`")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    if metadata.get("kind") != kind:
        raise ValueError(f"{path}: holds a {metadata.get('kind')!r}, expected a {kind!r}")
    try:
        model = SmallClassifier(state["mean"].numel(), int(metadata["hidden"]))
        model.load_state_dict(state)
        layout = json.loads(metadata["layout"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise ValueError(f"{path}: incomplete {kind} ({err})") from None
    return model.eval(), metadata.get("concept", ""), layout

