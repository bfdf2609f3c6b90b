"""ListOps at CPU scale: Transformer vs Mamba vs SeRpEnt classifiers of equal parameter count, one training recipe.

Every model is Embedding → N pre-norm residual blocks → LayerNorm → mean over real tokens → Linear(10); the blocks are
a Transformer encoder layer (learned positions, 4 heads, MLP 4×), a bidirectional Mamba mixer, or a bidirectional
SeRpEnt mixer. Widths are chosen per model so that parameter counts match `--params`. All models see the same
examples in the same order, with AdamW, linear warm-up then cosine decay, gradient clipping 1.0.

    .venv/bin/python bench/listops.py --steps 300 --out runs/listops.json

Prints one Markdown table row per model and writes all numbers to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

from safemotion.data.listops import N_CLASSES, PAD_ID, VOCAB, ListOpsConfig, encode_batch, generate_examples  # noqa: E402
from safemotion.models.ssm import Mamba, MambaConfig, SeRpEnt, SeRpEntConfig  # noqa: E402

MODELS = ("transformer", "mamba", "serpent")


@dataclass(frozen=True)
class Recipe:
    """Training settings shared by every model."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_fraction: float
    layers: int
    params: int
    scan: str


class TransformerBlock(nn.Module):
    """Pre-norm Transformer encoder layer (self-attention + 4× MLP), no dropout; causal attention if asked."""

    def __init__(self, d: int, causal: bool = False) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.causal = causal

    def forward(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device) if self.causal else None
        return self.layer(x, src_mask=mask, src_key_padding_mask=padding_mask, is_causal=self.causal)


class MixerBlock(nn.Module):
    """x + mixer(LayerNorm(x)) for a sequence mixer taking (x, padding_mask)."""

    def __init__(self, d: int, mixer: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.mixer = mixer

    def forward(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        return x + self.mixer(self.norm(x), padding_mask)


class Classifier(nn.Module):
    """Token embedding, blocks, final norm, then masked mean pooling and a class head (ListOps by default), or, when
    causal, per-position logits (language modelling). pad_id None = no padding (every token is real)."""

    def __init__(self, kind: str, d: int, layers: int, max_length: int, scan: str, vocab_size: int = len(VOCAB),
                 n_out: int = N_CLASSES, pad_id: int | None = PAD_ID, causal: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d, padding_idx=pad_id)
        self.positions = nn.Parameter(torch.randn(max_length, d) * 0.02) if kind == "transformer" else None
        self.blocks = nn.ModuleList(_block(kind, d, scan, causal) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, n_out)
        self.pad_id, self.causal = pad_id, causal

    def forward(self, ids: Tensor) -> Tensor:
        padding_mask = None if self.pad_id is None else ids == self.pad_id
        x = self.embed(ids)
        if self.positions is not None:
            x = x + self.positions[: ids.shape[1]]
        for block in self.blocks:
            x = block(x, padding_mask)
        x = self.norm(x)
        if self.causal:
            return self.head(x)
        if padding_mask is None:
            return self.head(x.mean(dim=1))
        x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        return self.head(x.sum(dim=1) / (~padding_mask).sum(dim=1, keepdim=True))


def _block(kind: str, d: int, scan: str, causal: bool) -> nn.Module:
    if kind == "transformer":
        return TransformerBlock(d, causal)
    if kind == "mamba":
        return MixerBlock(d, Mamba(MambaConfig(d_model=d, bidirectional=not causal, scan=scan)))
    return MixerBlock(d, SeRpEnt(SeRpEntConfig(d_model=d, bidirectional=not causal, scan=scan)))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def width_for(kind: str, target: int, layers: int, max_length: int, scan: str, **model: object) -> int:
    """The width whose parameter count is closest to target: even, a multiple of 4 (heads) for the Transformer."""
    counts = {}
    for d in range(8, 1025, 4 if kind == "transformer" else 2):
        counts[d] = count_parameters(Classifier(kind, d, layers, max_length, scan, **model))
        if counts[d] >= target:
            break
    return min(counts, key=lambda d: abs(counts[d] - target))


def optimizer_for(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW; matrices decay, vectors (biases, norms, D), A_log and the position table do not."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 or name.endswith("A_log") or name == "positions" else decay).append(p)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.98))


def lr_factor(step: int, recipe: Recipe) -> float:
    """Linear warm-up, then cosine decay to 0."""
    warmup = max(1, int(recipe.warmup_fraction * recipe.steps))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, recipe.steps - warmup)))


def evaluate(model: nn.Module, ids: np.ndarray, targets: np.ndarray, batch_size: int = 128) -> float:
    """Accuracy on pre-encoded examples."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(ids), batch_size):
            batch = _trim(ids[start : start + batch_size])
            logits = model(torch.from_numpy(batch))
            correct += int((logits.argmax(-1).numpy() == targets[start : start + batch_size]).sum())
    model.train()
    return correct / len(ids)


def _trim(ids: np.ndarray) -> np.ndarray:
    # Drop columns that are padding in every row of the batch.
    return ids[:, : int((ids != PAD_ID).sum(axis=1).max())]


def train(kind: str, recipe: Recipe, data: dict[str, np.ndarray], max_length: int, seed: int) -> dict:
    """Train one model with the shared recipe; returns its numbers."""
    torch.manual_seed(seed)
    d = width_for(kind, recipe.params, recipe.layers, max_length, recipe.scan)
    model = Classifier(kind, d, recipe.layers, max_length, recipe.scan)
    optimizer = optimizer_for(model, recipe)
    rng, n_train = np.random.default_rng(seed), len(data["train_ids"])
    epochs = -(-recipe.steps * recipe.batch_size // n_train)
    order = np.concatenate([rng.permutation(n_train) for _ in range(epochs)])
    step_times, losses = [], []
    for step in range(recipe.steps):
        rows = order[step * recipe.batch_size : (step + 1) * recipe.batch_size]
        ids = torch.from_numpy(_trim(data["train_ids"][rows]))
        targets = torch.from_numpy(data["train_targets"][rows])
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr * lr_factor(step, recipe)
        start = time.perf_counter()
        loss = F.cross_entropy(model(ids), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step_times.append(time.perf_counter() - start)
        losses.append(loss.item())
        if (step + 1) % 50 == 0:
            print(f"{kind} step {step + 1}/{recipe.steps} loss {np.mean(losses[-50:]):.3f} "
                  f"{np.median(step_times[-50:]):.3f} s/step", flush=True)
    return {
        "model": kind,
        "width": d,
        "params": count_parameters(model),
        "train_loss_last50": float(np.mean(losses[-50:])),
        "train_accuracy": evaluate(model, data["train_ids"][: len(data["test_ids"])], data["train_targets"][: len(data["test_ids"])]),
        "test_accuracy": evaluate(model, data["test_ids"], data["test_targets"]),
        "median_step_s": float(np.median(step_times)),
        "mean_step_s": float(np.mean(step_times)),
    }


def write_json(path: Path, payload: dict) -> None:
    """Write JSON atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup-fraction", type=float, default=0.1)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--params", type=int, default=100_000, help="target parameter count per model")
    parser.add_argument("--min-length", type=int, default=100, help="keep trees with more tokens than this")
    parser.add_argument("--max-length", type=int, default=256, help="keep trees with fewer tokens than this")
    parser.add_argument("--train-size", type=int, default=8000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--scan", choices=("auto", "chunked", "native", "sequential"), default="auto",
                        help="selective-scan implementation (numerically equivalent; auto = the fused C kernel on CPU)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/listops.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    config = ListOpsConfig(min_length=args.min_length, max_length=args.max_length)
    start = time.perf_counter()
    examples = generate_examples(args.train_size + args.test_size, args.seed, config)
    max_length = args.max_length + 1  # room for <eos>
    ids = encode_batch([e.source for e in examples], max_length)
    targets = np.array([e.target for e in examples], dtype=np.int64)
    n = args.train_size
    data = {"train_ids": ids[:n], "train_targets": targets[:n], "test_ids": ids[n:], "test_targets": targets[n:]}
    majority = float(np.bincount(targets[n:], minlength=N_CLASSES).max() / len(targets[n:]))
    print(f"generated {len(examples)} examples in {time.perf_counter() - start:.1f} s; test majority {majority:.3f}", flush=True)

    recipe = Recipe(args.steps, args.batch_size, args.lr, args.weight_decay, args.warmup_fraction, args.layers, args.params, args.scan)
    results = []
    for kind in args.models:
        results.append(train(kind, recipe, data, max_length, args.seed))
        write_json(args.out, {"recipe": asdict(recipe), "data": vars(args) | {"out": str(args.out)},
                              "test_majority": majority, "torch": torch.__version__,
                              "machine": platform.processor() or platform.machine(), "results": results})
    print("| model | width | params | test acc | train acc | train loss | s/step (median) |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['width']} | {r['params']:,} | {r['test_accuracy']:.3f} | {r['train_accuracy']:.3f} | "
              f"{r['train_loss_last50']:.3f} | {r['median_step_s']:.3f} |")


if __name__ == "__main__":
    main()
