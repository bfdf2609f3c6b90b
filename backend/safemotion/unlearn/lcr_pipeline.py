"""`safemotion unlearn lcr`: Latent Code Replacement of a concept, from a model directory to a new model directory.

1. Read the forget/retain clip ids (`kw_splits/<rule>/train_val-{w,wo}-<concept>.txt`, see concept_split.py).
2. Encode caption crops of the train_val split with the model's RVQ (code_stats.py; cached).
3. Per edited layer (base layer 0 by default): presence counts of every code in forget and retain samples, selection
   of the union of the top-k codes by both ratios (k = 16), replacement of the selected rows by code 0 (or a seeded
   random uncensored code when 0 is selected) + α·σ·N(0, I) noise (α = 1) drawn once from `seed`, or the orthogonal
   projection variant (lcr.py).
4. Write a model directory: same transformers and length estimator (byte-identical files), the edited VQ, the
   unlearning record in config.json (removed codes, provenance) and the unedited codebooks in
   `original_codebooks.safetensors` (record.py).

Nothing is written when an input is bad; the output is deterministic for a seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from safemotion.data.concepts import DEFAULT_RULE
from safemotion.data.motion_dataset import read_split
from safemotion.generate import pick_device
from safemotion.models.model_dir import load_model_dir, stored_dtype
from safemotion.portable_path import portable_path
from safemotion.unlearn.code_stats import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_REPEATS,
    StatsSettings,
    collect_codes,
    default_cache_dir,
)
from safemotion.unlearn.concept_split import ConceptSplit, load_concept_split
from safemotion.unlearn.lcr import (
    DEFAULT_K,
    apply_lcr,
    choose_source_code,
    codebook_std,
    orthogonal_projection_vectors,
    replacement_vectors,
    select_codes,
)
from safemotion.unlearn.record import (
    ORIGINAL_CODEBOOKS_FILE,
    UnlearningRecord,
    codebook_tensors,
    model_card_with_unlearning,
    require_original_model,
    save_unlearned_model,
    source_model_info,
)

USE_DEFAULT_CACHE = "default"


@dataclass
class LCROptions:
    """Inputs of one LCR run; the defaults are the released code's (hmu_unlearning.md §1.6)."""

    model: Path
    data: Path
    out: Path
    concept: str = "violence"
    rule: str = DEFAULT_RULE
    k: int = DEFAULT_K
    alpha: float = 1.0
    layers: tuple[int, ...] = (0,)
    orthogonal: bool = False
    source_code: int = 0
    seed: int = 0
    repeats: int = DEFAULT_REPEATS
    split: str = "train_val"
    count_padding: bool = True
    cache_dir: Path | str | None = USE_DEFAULT_CACHE  # None: no cache
    batch_size: int = DEFAULT_BATCH_SIZE
    precision: str = "fp32"  # of the VQ encoder while collecting statistics (StatsSettings.precision)
    device: str = "auto"
    overwrite: bool = False
    progress: bool = True


@dataclass
class LayerEdit:
    """What LCR did to one RVQ layer."""

    layer: int
    removed: list[int]
    source_code: int | None  # None for the orthogonal variant
    sigma: float
    forget_counts: np.ndarray
    retain_counts: np.ndarray


@dataclass
class LCRResult:
    """Where the model went and what was removed, with timings (seconds)."""

    out: Path
    edits: list[LayerEdit]
    n_forget: int
    n_retain: int
    cache_file: Path | None
    cache_hit: bool
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def removed_codes(self) -> dict[int, list[int]]:
        """RVQ layer -> removed code ids."""
        return {edit.layer: edit.removed for edit in self.edits}


def run_lcr(options: LCROptions) -> LCRResult:
    """Unlearn options.concept from options.model with LCR and write the result to options.out."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    out = Path(options.out)
    if out.exists() and not options.overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")
    _check_settings(options)
    split = load_concept_split(options.data, options.concept, options.rule, options.split)
    _check_coverage(split, read_split(options.data, options.split))
    device = pick_device(options.device)
    models = load_model_dir(options.model, device=device)
    require_original_model(models.config, options.model)
    nb_code = models.config.vq.nb_code
    if options.k > nb_code:
        raise ValueError(f"k = {options.k} is larger than the codebook ({nb_code} codes)")
    if not 0 <= options.source_code < nb_code:
        raise ValueError(f"source code {options.source_code} is outside the codebook (0..{nb_code - 1})")
    settings = StatsSettings(split=options.split, repeats=options.repeats, seed=options.seed,
                             layers=tuple(options.layers), batch_size=options.batch_size,
                             precision=options.precision)
    settings.validate(models.config.vq.num_quantizers)
    for layer in options.layers:
        if not models.vq.quantizer.layers[layer].codebook.any():
            raise ValueError(f"{options.model}: the codebook of RVQ layer {layer} is all zeros (the VQ was never "
                             "trained); LCR needs a trained codebook")
    timings["load"] = time.perf_counter() - start

    start = time.perf_counter()
    cache_dir = default_cache_dir(options.data) if options.cache_dir == USE_DEFAULT_CACHE else options.cache_dir
    table, cache_file, cache_hit = collect_codes(models, options.data, settings, cache_dir, device, options.progress)
    timings["statistics"] = time.perf_counter() - start

    start = time.perf_counter()
    edits, n_forget, n_retain = [], 0, 0
    originals = {}
    for layer in options.layers:
        forget, n_forget = table.presence(layer, split.forget_ids, nb_code, options.count_padding)
        retain, n_retain = table.presence(layer, split.retain_ids, nb_code, options.count_padding)
        _check_counts(n_forget, n_retain)
        removed = select_codes(forget, retain, n_forget, n_retain, options.k)
        quantizer = models.vq.quantizer.layers[layer]
        originals[layer] = quantizer.codebook.detach().clone()
        edited, source = edit_codebook(quantizer.codebook, removed, options.alpha, options.orthogonal,
                                       options.seed + layer, options.source_code)
        quantizer.codebook.copy_(edited)
        edits.append(LayerEdit(layer, removed, source, codebook_std(originals[layer]), forget, retain))
    timings["select_and_edit"] = time.perf_counter() - start

    start = time.perf_counter()
    record = UnlearningRecord(
        method="lcr", concept=options.concept, rule=options.rule, split_files=split.provenance(),
        settings={"k": options.k, "alpha": options.alpha, "layers": list(options.layers),
                  "orthogonal": options.orthogonal, "seed": options.seed, "preferred_source_code": options.source_code,
                  "source_codes": {str(e.layer): e.source_code for e in edits},
                  "sigma": {str(e.layer): e.sigma for e in edits}, "repeats": options.repeats, "split": options.split,
                  "count_padding": options.count_padding, "samples": {"forget": n_forget, "retain": n_retain},
                  "statistics_precision": options.precision,
                  "dataset": portable_path(options.data),
                  "selection": "union of top-k by n_f/n_r and by (n_f/Σn_f)/(n_r/Σn_r)"},
        source_model=source_model_info(options.model),
        removed_codes={e.layer: e.removed for e in edits},
        original_codebooks=ORIGINAL_CODEBOOKS_FILE,
    )
    save_unlearned_model(models.to("cpu"), out, record, model_card_with_unlearning(options.model, record),
                         extra_files={ORIGINAL_CODEBOOKS_FILE: codebook_tensors(originals)},
                         overwrite=options.overwrite, dtype=stored_dtype(options.model))
    timings["write"] = time.perf_counter() - start
    return LCRResult(out, edits, n_forget, n_retain, cache_file, cache_hit, timings)


def edit_codebook(codebook: torch.Tensor, removed: list[int], alpha: float, orthogonal: bool, seed: int,
                  preferred_source: int = 0) -> tuple[torch.Tensor, int | None]:
    """(edited copy of the codebook, source code or None for the orthogonal variant)."""
    if orthogonal:
        return apply_lcr(codebook, removed, orthogonal_projection_vectors(codebook, removed, alpha)), None
    vectors = replacement_vectors(codebook, removed, alpha, seed, preferred_source)
    source = choose_source_code(removed, codebook.shape[0], seed, preferred_source)
    return apply_lcr(codebook, removed, vectors), source


def _check_settings(options: LCROptions) -> None:
    if options.k < 1:
        raise ValueError(f"k must be at least 1, got {options.k}")
    if not np.isfinite(options.alpha) or options.alpha < 0:
        raise ValueError(f"alpha must be a finite number ≥ 0, got {options.alpha}")
    if options.repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {options.repeats}")


def _check_coverage(split: ConceptSplit, clip_ids: list[str]) -> None:
    """Every clip of the statistics split must be listed as forget or retain."""
    known = split.forget_ids | split.retain_ids
    stale = [clip for clip in clip_ids if clip not in known]
    if stale:
        raise ValueError(f"{split.forget_file.parent}: {len(stale)} clip(s) of {split.split}.txt (e.g. {stale[0]}) "
                         "are in neither split file; rewrite them with `safemotion data split`")


def _check_counts(n_forget: int, n_retain: int) -> None:
    for role, n in (("forget", n_forget), ("retain", n_retain)):
        if n == 0:
            raise ValueError(f"no {role} sample survived the 40-199 frame filter; LCR needs both forget and retain "
                             "motions")
