"""Model directory: the one on-disk model format that the server, CLI and add-on load.

    config.json                      ModelConfig (architecture, text encoder, fps, unit length, version)
    vq.safetensors                   RVQVAE state dict (codebooks included)
    mask_transformer.safetensors     MaskTransformer state dict
    residual_transformer.safetensors ResidualTransformer state dict
    length_estimator.safetensors     LengthEstimator state dict (absent when config.length_estimator is null)
    mean.npy, std.npy                feature normalisation (dim_pose,) float32: model space = (x - mean) / std
    MODEL_CARD.md                    provenance and intended use

Directories are written into a temporary sibling folder and renamed into place, so a reader never sees a
half-written model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from safemotion.atomic_dir import replace_dir
from safemotion.models.bamm_transformer import BammTransformer
from safemotion.models.config import ModelConfig
from safemotion.models.length_estimator import LengthEstimator
from safemotion.models.mask_transformer import MaskTransformer
from safemotion.models.residual_transformer import ResidualTransformer
from safemotion.models.rvqvae import RVQVAE
from safemotion.npy_arrays import read_numeric_npy

CONFIG_FILE = "config.json"
MEAN_FILE = "mean.npy"
STD_FILE = "std.npy"
CARD_FILE = "MODEL_CARD.md"
WEIGHT_FILES = {
    "vq": "vq.safetensors",
    "mask_transformer": "mask_transformer.safetensors",
    "residual_transformer": "residual_transformer.safetensors",
    "length_estimator": "length_estimator.safetensors",
}
MAX_LISTED_PROBLEMS = 8
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


class ModelDirError(ValueError):
    """A model directory is missing, incomplete or inconsistent."""


@dataclass
class MotionModels:
    """Everything a model directory holds, as live modules and arrays."""

    config: ModelConfig
    vq: RVQVAE
    mask_transformer: MaskTransformer | BammTransformer  # the base-layer generator named by config.generator
    residual_transformer: ResidualTransformer
    length_estimator: LengthEstimator | None
    mean: np.ndarray
    std: np.ndarray

    def components(self) -> dict[str, nn.Module]:
        """Weight-file component name → module, for the components this model has."""
        modules = {"vq": self.vq, "mask_transformer": self.mask_transformer,
                   "residual_transformer": self.residual_transformer, "length_estimator": self.length_estimator}
        return {name: module for name, module in modules.items() if module is not None}

    def to(self, device: str | torch.device) -> MotionModels:
        """Move every module to `device` (in place) and return self."""
        for module in self.components().values():
            module.to(device)
        return self

    def eval(self) -> MotionModels:
        """Put every module in eval mode and return self."""
        for module in self.components().values():
            module.eval()
        return self


COMPONENT_CLASSES = {"vq": RVQVAE, "mask_transformer": MaskTransformer, "residual_transformer": ResidualTransformer,
                     "length_estimator": LengthEstimator}  # MotionModels field = config section → module class
BASE_TRANSFORMERS = {"momask": MaskTransformer, "bamm": BammTransformer}  # config.generator → mask_transformer class
BASE_LAYER_NAMES = {"momask": "masked transformer", "bamm": "BAMM's causal/hybrid-mask transformer with an [END] token"}


def build_models(config: ModelConfig, mean: np.ndarray | None = None, std: np.ndarray | None = None) -> MotionModels:
    """Freshly initialised modules for `config`; mean/std default to 0/1."""
    config.validate()
    dim = config.vq.dim_pose
    mean = np.zeros(dim, np.float32) if mean is None else np.asarray(mean, np.float32)
    std = np.ones(dim, np.float32) if std is None else np.asarray(std, np.float32)
    _check_stats(mean, std, dim, "build_models")
    return MotionModels(config=config, **{name: build_component(config, name) for name in COMPONENT_CLASSES},
                        mean=mean, std=std)


def build_component(config: ModelConfig, name: str) -> nn.Module | None:
    """A freshly initialised component (a MotionModels field) of `config`; None for an absent length estimator."""
    section = getattr(config, name)
    if section is None:
        return None
    return (BASE_TRANSFORMERS[config.generator] if name == "mask_transformer" else COMPONENT_CLASSES[name])(section)


def save_model_dir(models: MotionModels, out_dir: str | Path, card: str | None = None,
                   overwrite: bool = False, dtype: torch.dtype | None = None) -> Path:
    """Write `models` as a model directory at out_dir (atomically) and return its path; `dtype` (e.g. float16)
    stores the floating-point tensors at that precision (they are loaded back as float32)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; choose another path or remove it first")
    models.config.validate()
    _check_stats(models.mean, models.std, models.config.vq.dim_pose, "save_model_dir")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        _write_contents(models, tmp, card if card is not None else model_card(models.config), dtype)
        check_model_dir(tmp)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_contents(models: MotionModels, folder: Path, card: str, dtype: torch.dtype | None = None) -> None:
    (folder / CONFIG_FILE).write_text(json.dumps(models.config.to_dict(), indent=2) + "\n", encoding="utf-8")
    for name, module in models.components().items():
        tensors = {key: _stored(value, dtype) for key, value in module.state_dict().items()}
        save_file(tensors, str(folder / WEIGHT_FILES[name]), metadata={"component": name})
    np.save(folder / MEAN_FILE, models.mean.astype(np.float32))
    np.save(folder / STD_FILE, models.std.astype(np.float32))
    (folder / CARD_FILE).write_text(card, encoding="utf-8")


def stored_dtype(path: str | Path) -> torch.dtype | None:
    """The floating-point precision a model directory stores its VQ weights in (None: float32), so derived models
    (LCR, UCE, ...) are written the same way."""
    with safe_open(str(Path(path) / WEIGHT_FILES["vq"]), framework="pt") as handle:
        dtype = handle.get_slice(next(iter(handle.keys()))).get_dtype()
    return {"F16": torch.float16, "BF16": torch.bfloat16}.get(dtype)


def _stored(value: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    value = value.detach().cpu()
    if dtype is not None and value.is_floating_point():
        value = value.to(dtype)
    return value.contiguous()


def read_model_config(path: str | Path) -> ModelConfig:
    """Parse and validate a model directory's config.json."""
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        raise ModelDirError(f"{path}: not a model directory (no {CONFIG_FILE}); "
                            "create one with `safemotion import-momask` or by training")
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ModelDirError(f"{config_path}:{err.lineno}: invalid JSON: {err.msg}") from None
    try:
        return ModelConfig.from_dict(data, where=str(config_path))
    except (ValueError, TypeError) as err:
        raise ModelDirError(str(err)) from None


def check_model_dir(path: str | Path) -> ModelConfig:
    """Verify config.json, mean/std and every tensor's name, shape and dtype (read from file headers)."""
    path = Path(path)
    config = read_model_config(path)
    _load_stats(path, config.vq.dim_pose)
    for name, module in build_empty_models(config).components().items():
        file = path / WEIGHT_FILES[name]
        _require_file(file)
        try:
            with safe_open(str(file), framework="pt") as handle:
                slices = {key: handle.get_slice(key) for key in handle.keys()}
                found = {key: (tuple(s.get_shape()), s.get_dtype() in FLOAT_DTYPES) for key, s in slices.items()}
        except (SafetensorError, OSError) as err:
            raise ModelDirError(f"{file}: not a readable safetensors file ({err})") from None
        _raise_problems(module, found, str(file))
    return config


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> MotionModels:
    """Load and verify a model directory; modules come back in eval mode on `device`."""
    path = Path(path)
    config = check_model_dir(path)
    mean, std = _load_stats(path, config.vq.dim_pose)
    models = build_empty_models(config)
    models.mean, models.std = mean, std
    for name, module in models.components().items():
        state = load_file(str(path / WEIGHT_FILES[name]), device=str(device))
        state = {key: value.float() if value.is_floating_point() else value for key, value in state.items()}
        module.load_state_dict(state, strict=True, assign=True)
    return models.eval()


def check_state_dict(module: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Raise ModelDirError listing missing, unexpected and wrongly shaped tensors of `state` for `module`."""
    found = {key: (tuple(value.shape), value.is_floating_point()) for key, value in state.items()}
    _raise_problems(module, found, where)


def _raise_problems(module: nn.Module, found: dict[str, tuple[tuple[int, ...], bool]], where: str) -> None:
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    problems = []
    for key, shape in expected.items():
        if key not in found:
            problems.append(f"missing tensor '{key}' (expected shape {list(shape)})")
        elif found[key][0] != shape:
            problems.append(f"tensor '{key}' has shape {list(found[key][0])}, expected {list(shape)}")
        elif not found[key][1]:
            problems.append(f"tensor '{key}' is not floating point")
    problems += [f"unexpected tensor '{key}' (shape {list(found[key][0])})" for key in found if key not in expected]
    if problems:
        listed = "; ".join(problems[:MAX_LISTED_PROBLEMS])
        more = f"; and {len(problems) - MAX_LISTED_PROBLEMS} more" if len(problems) > MAX_LISTED_PROBLEMS else ""
        raise ModelDirError(f"{where}: {len(problems)} tensor problem(s) for {type(module).__name__}: {listed}{more}")


def build_empty_models(config: ModelConfig) -> MotionModels:
    """Modules on the meta device (no memory, no init); fill them with load_state_dict(..., assign=True)."""
    with torch.device("meta"):
        return build_models(config)


def _require_file(file: Path) -> None:
    if not file.is_file():
        raise ModelDirError(f"{file}: weight file missing; the model directory is incomplete")


def _load_stats(path: Path, dim: int) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name in (MEAN_FILE, STD_FILE):
        file = path / name
        if not file.is_file():
            raise ModelDirError(f"{file}: missing; the model directory needs {MEAN_FILE} and {STD_FILE}")
        try:
            arrays.append(read_numeric_npy(file, finite=False))  # _check_stats reports non-finite values
        except ValueError as err:
            raise ModelDirError(str(err)) from None
    _check_stats(arrays[0], arrays[1], dim, str(path))
    return arrays[0], arrays[1]


def _check_stats(mean: np.ndarray, std: np.ndarray, dim: int, where: str) -> None:
    for name, array in (("mean", mean), ("std", std)):
        if array.shape != (dim,):
            raise ModelDirError(f"{where}: {name} has shape {list(array.shape)}, expected [{dim}] (vq.dim_pose)")
        if not np.all(np.isfinite(array)):
            raise ModelDirError(f"{where}: {name} contains NaN or infinite values")
    if np.any(std <= 0):
        raise ModelDirError(f"{where}: std has {int(np.sum(std <= 0))} non-positive entries")


def parameter_count(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters())


def model_card(config: ModelConfig, title: str = "SafeMotion text-to-motion model", provenance: str = "") -> str:
    """A MODEL_CARD.md text describing the architecture, inputs and provenance."""
    empty = build_empty_models(config)
    names = {"vq": "RVQ-VAE", "mask_transformer": "Masked transformer",
             "residual_transformer": "Residual transformer", "length_estimator": "Length estimator"}
    models = {names[key]: module for key, module in empty.components().items()}
    vq, mt = config.vq, config.mask_transformer
    rows = "\n".join(f"| {name} | {parameter_count(module):,} |" for name, module in models.items())
    return f"""# {title}

{provenance or "Trained with SafeMotion."}

## Architecture

MoMask-family model, base-layer generator `{config.generator}`: residual VQ-VAE ({vq.num_quantizers} codebooks × {vq.nb_code} codes × {vq.code_dim} dims,
{vq.downsample} frames per token), {BASE_LAYER_NAMES[config.generator]} for the base codes and residual transformer for the
other layers ({mt.num_layers} layers, width {mt.latent_dim}, {mt.num_heads} heads, backbone `{mt.backbone}`).

| component | trainable parameters |
|---|---|
{rows}

## Inputs and outputs

- Text encoder: `{config.text_encoder}`.
- Motion: {vq.dim_pose}-d HumanML3D features at {config.fps:g} fps, normalised with `mean.npy`/`std.npy`;
  at most {config.max_motion_length} frames; lengths are multiples of {config.unit_length} frames.
- Model directory format version {config.version}.
"""
