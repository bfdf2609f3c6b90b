"""Model configurations: every size of the MoMask family, as stored in a model directory's config.json.

The defaults are the released MoMask HumanML3D models (momask_architecture.md §3–§6); smaller models change
sizes here and run the same code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = 1
TEXT_ENCODER_DIMS: dict[str, int] = {"clip": 512, "minilm": 384}
VQ_ACTIVATIONS = ("relu", "silu", "gelu")
# Sequence mixers of the masked transformer: MoMask's post-LN transformer encoder, or pre-norm stacks of
# bidirectional Mamba / SeRpEnt mixers (conditioned_transformer.SSMEncoder). The residual transformer is
# transformer-only.
BACKBONES = ("transformer", "mamba", "serpent")
# Base-layer generators (the `mask_transformer` section and weights): MoMask's masked transformer or BAMM's
# causal/hybrid transformer with an [END] token (models.bamm_transformer). Both share the other components.
GENERATORS = ("momask", "bamm")


@dataclass(frozen=True)
class VQConfig:
    """Residual VQ-VAE: 1-D conv encoder, `num_quantizers` EMA codebooks, 1-D conv decoder."""

    dim_pose: int = 263
    nb_code: int = 512
    code_dim: int = 512
    width: int = 512
    down_t: int = 2
    stride_t: int = 2
    depth: int = 3
    dilation_growth_rate: int = 3
    activation: str = "relu"
    num_quantizers: int = 6
    quantize_dropout_prob: float = 0.2
    mu: float = 0.99

    @property
    def downsample(self) -> int:
        """Frames per token."""
        return self.stride_t**self.down_t


@dataclass(frozen=True)
class TransformerConfig:
    """Text-conditioned token transformer (masked base layer or residual layers).

    `backbone` is one of BACKBONES; num_heads is used by the "transformer" backbone only, ssm_state (N) and
    ssm_expand (d_inner = ssm_expand · latent_dim) by the "mamba" and "serpent" ones (Mamba's defaults 16 and 2).
    """

    latent_dim: int = 384
    ff_size: int = 1024
    num_layers: int = 8
    num_heads: int = 6
    dropout: float = 0.2
    cond_drop_prob: float = 0.1
    text_dim: int = 512
    num_tokens: int = 512
    code_dim: int = 512
    num_quantizers: int = 6
    backbone: str = "transformer"
    ssm_state: int = 16
    ssm_expand: int = 2


@dataclass(frozen=True)
class LengthEstimatorConfig:
    """MLP from the text feature to a distribution over token lengths."""

    text_dim: int = 512
    hidden_dim: int = 512
    num_classes: int = 50
    dropout: float = 0.2


@dataclass(frozen=True)
class ModelConfig:
    """A complete text-to-motion model: VQ, both transformers, optional length estimator, text encoder, timing."""

    vq: VQConfig = field(default_factory=VQConfig)
    mask_transformer: TransformerConfig = field(default_factory=TransformerConfig)
    residual_transformer: TransformerConfig = field(default_factory=lambda: TransformerConfig(cond_drop_prob=0.2))
    length_estimator: LengthEstimatorConfig | None = field(default_factory=LengthEstimatorConfig)
    text_encoder: str = "clip"
    generator: str = "momask"
    fps: float = 20.0
    unit_length: int = 4
    max_motion_length: int = 196
    version: int = FORMAT_VERSION
    # Sections written by `safemotion unlearn` (see safemotion.unlearn.record); None for a plain model.
    unlearning: dict[str, Any] | None = None
    safety: dict[str, Any] | None = None

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent setting."""
        if self.version != FORMAT_VERSION:
            raise ValueError(
                f"config version {self.version} is not supported (this SafeMotion reads version {FORMAT_VERSION})"
            )
        if self.text_encoder not in TEXT_ENCODER_DIMS:
            raise ValueError(
                f"text_encoder {self.text_encoder!r} is unknown; choose one of {sorted(TEXT_ENCODER_DIMS)}"
            )
        for name in ("unlearning", "safety"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), dict):
                raise ValueError(f"'{name}' must be an object or null, found {type(getattr(self, name)).__name__}")
        if self.generator not in GENERATORS:
            raise ValueError(f"generator {self.generator!r} is unknown; choose one of {list(GENERATORS)}")
        if self.generator == "bamm" and self.mask_transformer.backbone != "transformer":
            raise ValueError(f"generator 'bamm' needs mask_transformer.backbone 'transformer', "
                             f"not {self.mask_transformer.backbone!r}")
        text_dim = TEXT_ENCODER_DIMS[self.text_encoder]
        vq = self.vq
        if vq.activation not in VQ_ACTIVATIONS:
            raise ValueError(f"vq.activation {vq.activation!r} is unknown; choose one of {list(VQ_ACTIVATIONS)}")
        if vq.num_quantizers < 2:
            raise ValueError(f"vq.num_quantizers is {vq.num_quantizers}; the residual transformer needs at least 2")
        if self.unit_length != vq.downsample:
            raise ValueError(
                f"unit_length {self.unit_length} must equal the VQ downsampling stride_t**down_t = {vq.downsample}"
            )
        for name in ("mask_transformer", "residual_transformer"):
            tcfg: TransformerConfig = getattr(self, name)
            expected = {"num_tokens": vq.nb_code, "code_dim": vq.code_dim, "num_quantizers": vq.num_quantizers,
                        "text_dim": text_dim}
            for key, value in expected.items():
                if getattr(tcfg, key) != value:
                    raise ValueError(f"{name}.{key} is {getattr(tcfg, key)} but must be {value} to match the model")
            allowed = BACKBONES if name == "mask_transformer" else ("transformer",)
            if tcfg.backbone not in allowed:
                raise ValueError(f"{name}.backbone {tcfg.backbone!r} is not supported; choose one of {list(allowed)}")
            if tcfg.ssm_state < 1 or tcfg.ssm_expand < 1:
                raise ValueError(f"{name}.ssm_state ({tcfg.ssm_state}) and ssm_expand ({tcfg.ssm_expand}) must be ≥ 1")
            if tcfg.backbone == "transformer" and tcfg.latent_dim % tcfg.num_heads:
                raise ValueError(f"{name}.latent_dim {tcfg.latent_dim} is not divisible by num_heads {tcfg.num_heads}")
        if self.length_estimator is not None and self.length_estimator.text_dim != text_dim:
            raise ValueError(
                f"length_estimator.text_dim is {self.length_estimator.text_dim} but the {self.text_encoder} "
                f"text encoder gives {text_dim}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dictionary."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> ModelConfig:
        """Parse and validate; unknown keys or wrongly typed values raise ValueError naming `where` and the key."""
        nested = {
            "vq": VQConfig,
            "mask_transformer": TransformerConfig,
            "residual_transformer": TransformerConfig,
            "length_estimator": LengthEstimatorConfig,
        }
        top = _check_keys(cls, data, where)
        for key, sub_cls in nested.items():
            if key not in top:
                continue
            value = top[key]
            if value is None and key == "length_estimator":
                continue
            if not isinstance(value, dict):
                raise ValueError(f"{where}: '{key}' must be an object, found {type(value).__name__}")
            top[key] = sub_cls(**_check_keys(sub_cls, value, f"{where}: {key}"))
        config = cls(**top)
        try:
            config.validate()
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        return config


def _check_keys(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """Copy of `data` after checking every key is a field of `cls` and scalar values have the field's type."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, found {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for key, value in data.items():
        if key not in fields:
            raise ValueError(f"{where}: unknown key '{key}' (known: {', '.join(fields)})")
        default = _default_of(fields[key])
        expected = type(default) if isinstance(default, (bool, int, float, str)) else None
        if expected is not None and not _is_type(value, expected):
            raise ValueError(f"{where}: '{key}' must be {expected.__name__}, found {value!r}")
        out[key] = float(value) if expected is float else value
    return out


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return None


def _is_type(value: Any, expected: type) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)
