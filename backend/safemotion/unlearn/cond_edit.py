"""UCE and RECE baselines: closed-form edits of the text-condition projection `cond_emb` of both transformers.

As Mamiglia/hmu `src/methods/rece.py` with `scripts/eval/rece_uce.sh` (hmu_unlearning.md §4). For a layer
layer(x) = Wx + b, with text features c_f (each single forget keyword), c_t (the empty prompt "") and c_r (22 retain
words):

    u_f  = layer(c_f) / ‖layer(c_f)‖ ;   v_f = layer(c_t) − ⟨layer(c_t), u_f⟩ u_f ;   v_r = layer(c_r)
    W'   = (λW + η Σ_f v_f c_fᵀ + ρ Σ_r v_r c_rᵀ)(λI + η Σ_f c_f c_fᵀ + ρ Σ_r c_r c_rᵀ)⁻¹        (UCE; b kept)

λ = 0.1, η = 0.1, ρ = 0.5. W' minimises λ‖W' − W‖² + η Σ‖W'c_f − v_f‖² + ρ Σ‖W'c_r − v_r‖². The released code uses
the biased outputs as targets of W' alone and keeps b, so edited outputs land near target + b (retain words drift to
Wc + 2b); SafeMotion's default subtracts b from the targets, so that W'c + b hits them (`bias_quirk=True` reproduces
the released code).

RECE (`epochs` rounds, 1 in the script): adversarial features c_adv = (γI + Σ_l W_lᵀW_l)⁻¹(Σ_l W_lᵀW_l) c_f over both
edited layers (γ = 1e-3, current weights, no bias), then a UCE step with c_adv in place of c_f from the current
weights. Each layer is edited independently; only `cond_emb.weight` of the two transformers changes.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from safemotion.data.concepts import load_concept
from safemotion.generate import pick_device
from safemotion.models.model_dir import MotionModels, load_model_dir, stored_dtype
from safemotion.models.text_encoders import TextEncoder, load_text_encoder
from safemotion.unlearn.record import (
    UnlearningRecord,
    model_card_with_unlearning,
    require_original_model,
    save_unlearned_model,
    source_model_info,
)

# scripts/eval/rece_uce.sh
RETAIN_WORDS = ("walk", "walking", "run", "running", "jog", "step", "turn", "dance", "dancing", "move", "moving",
                "steps", "raise", "arm", "leg", "forward", "front", "backward", "sit", "dodge", "moves")
TARGET_TEXT = ""
COND_METHODS = ("uce", "rece")


@dataclass(frozen=True)
class CondEditSettings:
    """Closed-form edit strengths (released script values)."""

    lam: float = 0.1
    eta: float = 0.1  # erase_scale
    rho: float = 0.5  # preserve_scale
    gamma: float = 1e-3  # RECE regulariser
    epochs: int = 1  # RECE rounds
    bias_quirk: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the first out-of-range setting."""
        for name in ("lam", "eta", "rho", "gamma"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.lam == 0 and self.gamma == 0:
            raise ValueError("lam and gamma cannot both be 0 (the closed forms would be singular)")
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")


@dataclass(frozen=True)
class CondTexts:
    """Text features (rows) of the forget keywords, the target prompt and the retain words."""

    forget: Tensor  # (F, text_dim)
    target: Tensor  # (text_dim,)
    retain: Tensor  # (R, text_dim)


def uce_weight(weight: Tensor, bias: Tensor, forget: Tensor, target: Tensor, retain: Tensor,
               settings: CondEditSettings) -> Tensor:
    """UCE's new weight (out, in) for layer(x) = weight·x + bias, in weight's dtype (computed in float64)."""
    w, b = weight.double(), bias.double()
    c_f, c_t, c_r = forget.double(), target.double().reshape(1, -1), retain.double()
    out_f = c_f @ w.T + b
    unit = out_f / out_f.norm(dim=1, keepdim=True)
    out_t = c_t @ w.T + b
    values_f = out_t - (unit * out_t).sum(dim=1, keepdim=True) * unit
    values_r = c_r @ w.T + b
    if not settings.bias_quirk:
        values_f, values_r = values_f - b, values_r - b
    eye = torch.eye(w.shape[1], dtype=torch.float64, device=w.device)
    numerator = settings.lam * w + settings.eta * values_f.T @ c_f + settings.rho * values_r.T @ c_r
    gram = settings.lam * eye + settings.eta * c_f.T @ c_f + settings.rho * c_r.T @ c_r
    # numerator · gram⁻¹ with gram symmetric.
    return torch.linalg.solve(gram, numerator.T).T.to(weight.dtype)


def rece_adversarial(weights: list[Tensor], forget: Tensor, gamma: float) -> Tensor:
    """RECE's adversarial features (F, in): (γI + Σ WᵀW)⁻¹ (Σ WᵀW) c_f for every row c_f."""
    gram = sum(w.double().T @ w.double() for w in weights)
    eye = torch.eye(gram.shape[0], dtype=torch.float64, device=gram.device)
    return torch.linalg.solve(gamma * eye + gram, gram @ forget.double().T).T.to(forget.dtype)


def edit_cond_layers(layers: list[nn.Linear], texts: CondTexts, method: str, settings: CondEditSettings) -> None:
    """Apply UCE (or UCE then RECE rounds) to the weights of `layers`, in place."""
    if method not in COND_METHODS:
        raise ValueError(f"method {method!r} is unknown; choose one of {', '.join(COND_METHODS)}")
    settings.validate()
    dims = {layer.in_features for layer in layers}
    if dims != {texts.forget.shape[1]}:
        raise ValueError(f"text features are {texts.forget.shape[1]}-d but the layers take {sorted(dims)}-d inputs")
    with torch.no_grad():
        _uce_step(layers, texts.forget, texts, settings)
        if method == "rece":
            for _ in range(settings.epochs):
                adversarial = rece_adversarial([layer.weight for layer in layers], texts.forget, settings.gamma)
                _uce_step(layers, adversarial, texts, settings)


def _uce_step(layers: list[nn.Linear], forget: Tensor, texts: CondTexts, settings: CondEditSettings) -> None:
    new_weights = [uce_weight(layer.weight, layer.bias, forget, texts.target, texts.retain, settings)
                   for layer in layers]
    for layer, weight in zip(layers, new_weights):
        layer.weight.copy_(weight)


def edited_copy(models: MotionModels, texts: CondTexts, method: str, settings: CondEditSettings) -> MotionModels:
    """A copy of `models` whose two transformers' cond_emb weights are edited; the inputs stay untouched."""
    mask, residual = copy.deepcopy(models.mask_transformer), copy.deepcopy(models.residual_transformer)
    device = mask.cond_emb.weight.device
    texts = CondTexts(texts.forget.to(device), texts.target.to(device), texts.retain.to(device))
    edit_cond_layers([mask.cond_emb, residual.cond_emb], texts, method, settings)
    return dataclasses.replace(models, mask_transformer=mask, residual_transformer=residual)


def forget_words(concept: str) -> tuple[str, ...]:
    """The released forget keywords of a concept (its paper keyword list, e.g. 9 words for violence)."""
    try:
        return load_concept(concept, "paper").keywords
    except ValueError:
        raise ValueError(f"concept {concept!r} has no paper keyword list; pass the words to forget explicitly "
                         "(--forget-words)") from None


def encode_texts(encoder: TextEncoder, forget: tuple[str, ...], target: str, retain: tuple[str, ...]) -> CondTexts:
    """Text features of the forget words, the target prompt and the retain words."""
    if not forget or not retain:
        raise ValueError("UCE/RECE need at least one forget word and one retain word")
    features = encoder.encode([*forget, target, *retain]).float()
    return CondTexts(features[:len(forget)], features[len(forget)], features[len(forget) + 1:])


@dataclass
class CondEditOptions:
    """Inputs of `safemotion unlearn uce|rece`."""

    model: Path
    out: Path
    method: str = "uce"
    concept: str = "violence"
    forget: tuple[str, ...] | None = None  # None: forget_words(concept)
    retain: tuple[str, ...] = RETAIN_WORDS
    target: str = TARGET_TEXT
    settings: CondEditSettings = CondEditSettings()
    device: str = "auto"
    overwrite: bool = False
    clip_weights: Path | None = None
    clip_vocab: Path | None = None


def run_cond_edit(options: CondEditOptions, encoder: TextEncoder | None = None) -> Path:
    """Edit a model directory with UCE or RECE and write the result; `encoder` defaults to the model's own."""
    if options.method not in COND_METHODS:
        raise ValueError(f"method {options.method!r} is unknown; choose one of {', '.join(COND_METHODS)}")
    options.settings.validate()
    out = Path(options.out)
    if out.exists() and not options.overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")
    forget = tuple(options.forget) if options.forget else forget_words(options.concept)
    device = pick_device(options.device)
    models = load_model_dir(options.model, device=device)
    require_original_model(models.config, options.model)
    if encoder is None:
        encoder = load_text_encoder(models.config.text_encoder, device, options.clip_weights, options.clip_vocab)
    texts = encode_texts(encoder, forget, options.target, tuple(options.retain))
    edited = edited_copy(models, texts, options.method, options.settings)
    settings = dataclasses.asdict(options.settings)
    if options.method == "uce":
        settings.pop("gamma")
        settings.pop("epochs")
    record = UnlearningRecord(
        method=options.method, concept=options.concept, rule="paper", split_files={},
        settings={**settings, "forget_words": list(forget), "retain_words": list(options.retain),
                  "target_text": options.target, "text_encoder": models.config.text_encoder,
                  "edited": ["mask_transformer.cond_emb.weight", "residual_transformer.cond_emb.weight"]},
        source_model=source_model_info(options.model),
    )
    return save_unlearned_model(edited.to("cpu"), out, record, model_card_with_unlearning(options.model, record),
                                overwrite=options.overwrite, dtype=stored_dtype(options.model))
