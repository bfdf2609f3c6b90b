"""What an unlearned model directory records about its unlearning, and how such a directory is written.

`config.json` carries two optional sections (``ModelConfig.unlearning`` and ``ModelConfig.safety``):

    "unlearning": {
        "method": "lcr",                      # lcr | uce | rece | finetune
        "concept": "violence", "rule": "word_boundary",
        "split_files": {"forget": {"path": "kw_splits/word_boundary/train_val-w-violence.txt",
                                   "sha256": "...", "ids": 812}, "retain": {...}},
        "removed_codes": {"0": [3, 17, ...]},  # LCR: RVQ layer -> sorted removed code ids ({} for other methods)
        "original_codebooks": "original_codebooks.safetensors",   # LCR: file with the unedited codebooks
        "settings": {...},                     # the method's parameters (k, alpha, seed, ...; lambda, eta, ...)
        "source_model": {"path": "...", "vq_sha256": "..."},
        "created": "2025-01-01T00:00:00+00:00"
    },
    "safety": {"threshold": 0.2, "calibrated": false, "calibration": null,
               "prompt_threshold": 0.6, "motion_threshold": 0.7,          # screened models (decision.py)
               "combiner": {"weights": [...], "bias": ..., "threshold": 0.5}, "signals_calibration": {...}}

`original_codebooks.safetensors` holds tensor ``layer_<i>`` = the full, unedited codebook (nb_code, code_dim) of
every edited RVQ layer, so generation under the ``allow`` policy and motion audits can use the original codes.
A directory is staged next to its destination and renamed into place, extra files included.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
import torch
from torch import Tensor

from safemotion.atomic_dir import replace_dir, write_text_atomic
from safemotion.portable_path import portable_path
from safemotion.unlearn.decision import Combiner
from safemotion.models.config import ModelConfig
from safemotion.models.model_dir import (
    CARD_FILE,
    CONFIG_FILE,
    WEIGHT_FILES,
    ModelDirError,
    MotionModels,
    check_model_dir,
    read_model_config,
    save_model_dir,
)

METHODS = ("lcr", "uce", "rece", "finetune")
ORIGINAL_CODEBOOKS_FILE = "original_codebooks.safetensors"
# Flagging threshold of an LCR model until `safemotion unlearn calibrate` measures one (see flagging.py).
UNCALIBRATED_THRESHOLD = 0.2


@dataclass
class UnlearningRecord:
    """The `unlearning` section of config.json."""

    method: str
    concept: str
    rule: str
    split_files: dict[str, dict[str, Any]]
    settings: dict[str, Any]
    source_model: dict[str, Any]
    removed_codes: dict[int, list[int]] = field(default_factory=dict)
    original_codebooks: str | None = None
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (layer keys become strings)."""
        data = dataclasses.asdict(self)
        data["removed_codes"] = {str(layer): list(codes) for layer, codes in sorted(self.removed_codes.items())}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "unlearning") -> UnlearningRecord:
        """Parse the section; missing or malformed fields raise ValueError naming `where`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}")
        try:
            record = cls(**data)
        except TypeError as err:
            raise ValueError(f"{where}: {err}") from None
        if record.method not in METHODS:
            raise ValueError(f"{where}: method {record.method!r} is unknown; known: {', '.join(METHODS)}")
        try:
            record.removed_codes = {int(layer): [int(c) for c in codes]
                                    for layer, codes in dict(record.removed_codes).items()}
        except (TypeError, ValueError):
            raise ValueError(f"{where}: removed_codes must map layer numbers to lists of code ids") from None
        return record


@dataclass
class SafetySettings:
    """The `safety` section of config.json: the flagging threshold on the fraction of base tokens in removed codes.

    `threshold` judges generated motions (calibrated on generated tokens). `audit_threshold`, when set, judges motions
    that `safemotion audit` encodes from mocap (calibrated on real validation clips); without it audits use
    `threshold`.
    """

    threshold: float = UNCALIBRATED_THRESHOLD
    calibrated: bool = False
    calibration: dict[str, Any] | None = None
    audit_threshold: float | None = None
    audit_calibration: dict[str, Any] | None = None
    prompt_threshold: float | None = None
    motion_threshold: float | None = None
    combiner: dict[str, Any] | None = None
    signals_calibration: dict[str, Any] | None = None

    @property
    def signals_calibrated(self) -> bool:
        """Whether `safemotion unlearn calibrate --signals` stored the screens' thresholds and the combiner."""
        return None not in (self.prompt_threshold, self.motion_threshold, self.combiner)

    def audit(self) -> tuple[float, bool]:
        """(threshold, calibrated) for audits of existing motion."""
        if self.audit_threshold is not None:
            return self.audit_threshold, True
        return self.threshold, self.calibrated

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "safety") -> SafetySettings:
        """Parse the section; a threshold outside (0, 1] raises ValueError naming `where`."""
        try:
            settings = cls(**data)
        except TypeError as err:
            raise ValueError(f"{where}: {err}") from None
        thresholds = {"threshold": settings.threshold}
        for name in ("audit_threshold", "prompt_threshold", "motion_threshold"):
            if getattr(settings, name) is not None:
                thresholds[name] = getattr(settings, name)
        for name, value in thresholds.items():
            if not (isinstance(value, (int, float)) and 0 < value <= 1):
                raise ValueError(f"{where}: {name} must be in (0, 1], found {value!r}")
        if settings.combiner is not None:
            Combiner.from_dict(settings.combiner, f"{where}.combiner")
        return settings


def unlearning_record(config: ModelConfig) -> UnlearningRecord | None:
    """The model's unlearning record, or None for a model that was not unlearned."""
    return None if config.unlearning is None else UnlearningRecord.from_dict(config.unlearning)


def safety_settings(config: ModelConfig) -> SafetySettings:
    """The model's flagging settings (the uncalibrated default when the config has none)."""
    return SafetySettings() if config.safety is None else SafetySettings.from_dict(config.safety)


def removed_base_codes(config: ModelConfig) -> list[int]:
    """Sorted base-layer (layer 0) codes removed by LCR; empty for other models."""
    record = unlearning_record(config)
    return [] if record is None else sorted(record.removed_codes.get(0, []))


def require_original_model(config: ModelConfig, where: str | Path) -> None:
    """Raise ValueError when the model was already unlearned (methods start from an original model)."""
    record = unlearning_record(config)
    if record is not None:
        raise ValueError(f"{where}: this model was already unlearned ({record.method}, concept "
                         f"{record.concept!r}); start from the original model directory")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_model_info(model_dir: str | Path) -> dict[str, Any]:
    """Provenance of the model an unlearned model was made from: its path and VQ/transformer file hashes."""
    model_dir = Path(model_dir)
    hashes = {name: file_sha256(model_dir / file) for name, file in WEIGHT_FILES.items()
              if name != "length_estimator" and (model_dir / file).is_file()}
    return {"path": portable_path(model_dir), "sha256": hashes}


def model_card_with_unlearning(model_dir: str | Path, record: UnlearningRecord) -> str:
    """The source model's MODEL_CARD.md (if any) followed by an 'Unlearning' section describing `record`."""
    card_file = Path(model_dir) / CARD_FILE
    card = card_file.read_text(encoding="utf-8").rstrip("\n") if card_file.is_file() else "# SafeMotion model"
    lines = ["", "", "## Unlearning", "",
             f"- Method: `{record.method}`, concept `{record.concept}` (rule `{record.rule}`), made {record.created}.",
             f"- Source model: `{record.source_model.get('path', '?')}`."]
    for role, info in record.split_files.items():
        lines.append(f"- {role.capitalize()} split: `{info['path']}` ({info['ids']} ids, "
                     f"sha256 {info['sha256'][:12]}…).")
    if record.removed_codes:
        for layer, codes in sorted(record.removed_codes.items()):
            lines.append(f"- Removed codes of RVQ layer {layer} ({len(codes)}): {', '.join(map(str, codes))}.")
        lines.append(f"- Original codebooks kept in `{record.original_codebooks}` (used by the `allow` policy and "
                     "by `safemotion audit`).")
    settings = ", ".join(f"{key} = {value}" for key, value in record.settings.items())
    lines.append(f"- Settings: {settings}.")
    return card + "\n".join(lines) + "\n"


def save_unlearned_model(models: MotionModels, out: str | Path, record: UnlearningRecord, card: str,
                         extra_files: dict[str, dict[str, Tensor]] | None = None, overwrite: bool = False,
                         dtype: torch.dtype | None = None) -> Path:
    """Write `models` with `record` in config.json plus extra safetensors files, atomically, and return the path;
    `dtype` as in save_model_dir (callers pass the source model's `stored_dtype`).

    The directory is staged in a hidden sibling folder, verified, then renamed onto `out`.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")
    config = dataclasses.replace(models.config, unlearning=record.to_dict())
    config.validate()
    staged_models = dataclasses.replace(models, config=config)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".unlearn", dir=out.parent))
    try:
        folder = save_model_dir(staged_models, staging / out.name, card=card, dtype=dtype)
        for name, tensors in (extra_files or {}).items():
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(folder / name),
                      metadata={"component": Path(name).stem})
        check_model_dir(folder)
        replace_dir(folder, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def load_original_codebooks(model_dir: str | Path) -> dict[int, Tensor]:
    """RVQ layer -> unedited codebook (nb_code, code_dim) of an LCR model directory."""
    model_dir = Path(model_dir)
    record = unlearning_record(read_model_config(model_dir))
    if record is None or record.original_codebooks is None:
        raise ModelDirError(f"{model_dir}: the model keeps no original codebooks (it was not unlearned with LCR)")
    file = model_dir / record.original_codebooks
    if not file.is_file():
        raise ModelDirError(f"{file}: original codebooks file missing; the LCR model directory is incomplete")
    tensors = load_file(str(file))
    codebooks = {}
    for layer in record.removed_codes:
        key = f"layer_{layer}"
        if key not in tensors:
            raise ModelDirError(f"{file}: no tensor '{key}' for edited RVQ layer {layer}")
        codebooks[layer] = tensors[key]
    return codebooks


def update_config_section(model_dir: str | Path, section: str, value: dict[str, Any] | None) -> ModelConfig:
    """Replace one section ('safety' or 'unlearning') of a model directory's config.json atomically."""
    if section not in ("safety", "unlearning"):
        raise ValueError(f"section must be 'safety' or 'unlearning', got {section!r}")
    model_dir = Path(model_dir)
    config = read_model_config(model_dir)
    updated = dataclasses.replace(config, **{section: value})
    updated.validate()
    write_text_atomic(model_dir / CONFIG_FILE, json.dumps(updated.to_dict(), indent=2) + "\n")
    return updated


def codebook_tensors(codebooks: dict[int, Tensor]) -> dict[str, Tensor]:
    """Tensors of an original-codebooks file: layer_<i> -> codebook."""
    return {f"layer_{layer}": codebook.detach().cpu().clone() for layer, codebook in codebooks.items()}
