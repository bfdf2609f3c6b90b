"""The forget/retain unlearning benchmark (Human Motion Unlearning protocol) and the flag rates of each model.

Protocol (hmu_unlearning.md §3, momask_architecture.md §10):
- Sets: `kw_splits/<rule>/<split>-w-<concept>.txt` (forget) and `...-wo-...` (retain) of a HumanML3D-layout dataset,
  evaluated separately; **every caption line is its own sample** (sub-clips cut at their tags, 40 ≤ frames < 200).
- Each repeat shuffles a set, drops the partial last batch, draws the official evaluation crop of every motion
  (its ground-truth length) and generates each caption once with every model at that length
  (m_length // 4 tokens) with the paper's decoding settings (`SamplingConfig()`: 10 steps, CFG 4 / residual 5,
  temperature 1, top-k 0.9). All models see the same crops and the same seeds in a repeat (paired comparison).
- Metrics on evaluator embeddings (safemotion.eval.metrics): FID against the same set's ground truth, R@1..3 and
  MM-Dist in batches of 32, diversity (300 pairs), and on the forget set MM-Safe: the distance to the caption with
  the concept's words masked (`mask_concept_words` on the `word/POS` token string, as hmu does). 20 repeats,
  mean ± 1.96·std/√n. A "real motions" reference row scores an independent crop of the real motions.
  Multimodality is not computed (the paper's tables do not show it).
- Rows that sample tokens identically (equal transformer and length-estimator weights and configs, e.g. a model and
  its LCR edit, which changes only the VQ) sample them once per repeat and decode them each with its own VQ; the
  shared sampling time counts in each row's generation time.
- A set with fewer than 32 samples is evaluated in one batch of all its samples (noted in the report); FID is then
  a rough number (few samples for the embedding size).

Flag rates: each prompt of the shipped sets (explicit_violent, implicit_violent, safe) is generated
`prompt_variations` times and reviewed by `safemotion.unlearn.flagging` (fraction of base tokens in the removed codes
≥ the model's threshold). A model without removed codes is scored with the removed codes and threshold of the
benchmark's LCR model when its base-layer codebook equals that model's original (pre-LCR) codebook — the same
transformer-facing codes, e.g. the original, fine-tuned, UCE and RECE models — and is "n/a" otherwise (a retrained
VQ has other codes). The mean hit ratio (fraction of base tokens in removed codes) is recorded too. The keyword
rule's rate on the prompt text is listed as a text-only reference. Rows that sample the same tokens and are scored
with the same codes share one flag-rate entry unless screens (which read the decoded motion) take part.

Models: `name=MODEL_DIR` pairs, or names looked up as folders of a models root. A model called `lcr` must carry
removed codes; a model unlearned for another concept than the benchmark's is refused.

Adding rows to a report (`add_rows`): every repeat's crops and seeds depend only on (seed, repeat, set), not on the
rows, so a later run of other models with the report's settings (`report_settings`) scores them on the same samples.
The merge checks that: same settings, split files, evaluator and a real-motion row equal to the report's, value for
value up to float rounding (relative 1e-5 or absolute 1e-4: thread count and BLAS order change the last digits; other crops change the
numbers entirely), its first `repeats` values where the later run made fewer repeats; the report's rows stay as they
are.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from safemotion.data.concept_splits import read_ids
from safemotion.data.concepts import DEFAULT_RULE, load_concept, matches_concept
from safemotion.decoding import SamplingConfig
from safemotion.eval.evaluator import (
    Evaluator,
    EvaluatorConfig,
    TextMotionPair,
    evaluation_crop,
    load_evaluator,
    load_text_motion_pairs,
    read_evaluator_config,
)
from safemotion.eval.flag_rates import prompt_set_flags
from safemotion.eval.masking import mask_concept_words
from safemotion.eval.metrics import BATCH_SIZE, diversity, fid, mean_and_ci, mm_dist, mm_safe, r_precision
from safemotion.generate import Generator, pick_device
from safemotion.models.model_dir import MotionModels, load_model_dir, read_model_config
from safemotion.models.text_encoders import TextEncoder, load_text_encoder
from safemotion.motion.features import FEATURE_DIM
from safemotion.portable_path import portable_command, portable_path
from safemotion.unlearn.concept_split import split_files
from safemotion.unlearn.prompt_sets import PROMPT_SETS, load_prompt_set
from safemotion.unlearn.screening import load_screens
from safemotion.unlearn.record import (
    file_sha256,
    load_original_codebooks,
    removed_base_codes,
    safety_settings,
    unlearning_record,
)

DEFAULT_EVALUATOR = Path(__file__).resolve().parents[1] / "assets" / "evaluators" / "safemotion-eval-v1"
SETS = ("forget", "retain")
REAL = "real motions"
DEFAULT_PROMPT_SECONDS = 4.0  # prompt length for flag rates when a model has no length estimator
MIN_SAMPLES = 3  # R@3 needs batches of at least 3
REAL_RTOL = 1e-5  # added rows: the real-motion row may differ from the report's by float rounding (threads, BLAS)
REAL_ATOL = 1e-4  # ... and FID near 0 is a small difference of O(10) terms, so its rounding is absolute, not relative


@dataclass(frozen=True)
class BenchmarkSettings:
    """What the benchmark runs; the defaults are the paper's protocol on the test split."""

    sets: tuple[str, ...] = SETS
    repeats: int = 20
    batch_size: int = BATCH_SIZE
    concept: str = "violence"
    rule: str = DEFAULT_RULE
    split: str = "test"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    max_samples: int | None = None  # per set, after a fixed shuffle (quick runs)
    samples_per_repeat: int | None = None  # cap per repeat: each repeat scores a fresh random subset (whole batches)
    prompt_sets: tuple[str, ...] = PROMPT_SETS
    prompt_variations: int = 3
    max_prompts: int | None = None  # per prompt set (quick runs)
    seed: int = 0
    quick: bool = False
    device: str = "cpu"

    def validate(self) -> None:
        """Raise ValueError naming the first invalid setting."""
        unknown = [s for s in self.sets if s not in SETS]
        if not self.sets or unknown:
            raise ValueError(f"sets {list(self.sets)}: choose one or more of {', '.join(SETS)}")
        unknown = [s for s in self.prompt_sets if s not in PROMPT_SETS]
        if unknown:
            raise ValueError(f"prompt sets {unknown} are unknown; choose from {', '.join(PROMPT_SETS)}")
        if self.repeats < 1 or self.batch_size < MIN_SAMPLES or self.prompt_variations < 0:
            raise ValueError(f"repeats ({self.repeats}) must be ≥ 1, batch_size ({self.batch_size}) ≥ {MIN_SAMPLES}, "
                             f"prompt_variations ({self.prompt_variations}) ≥ 0")
        for name, least in (("max_samples", MIN_SAMPLES), ("samples_per_repeat", self.batch_size),
                            ("max_prompts", 1)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise ValueError(f"{name} is {value}; give at least {least} or None for all")
        load_concept(self.concept, self.rule)
        self.sampling.validate()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        data = dataclasses.asdict(self)
        data["sampling"] = dataclasses.asdict(self.sampling)
        return data


def quick_settings(settings: BenchmarkSettings | None = None) -> BenchmarkSettings:
    """A smoke-test version of `settings`: 2 repeats, ≤ 32 samples per set, 4 prompts per set generated once."""
    return dataclasses.replace(settings or BenchmarkSettings(), repeats=2, max_samples=32, prompt_variations=1,
                               max_prompts=4, quick=True)


# ---------------------------------------------------------------------------------------------- models

@dataclass(frozen=True)
class ModelSpec:
    """A benchmark row: its name and model directory."""

    name: str
    path: Path


def parse_model_specs(models: str | Sequence[str], models_root: str | Path | None = None) -> list[ModelSpec]:
    """Rows from 'name=DIR' items or bare names (folders of `models_root`), comma-separated or as a list."""
    items = [s.strip() for s in (models.split(",") if isinstance(models, str) else models) if s.strip()]
    if not items:
        raise ValueError("no models given; pass e.g. --models original,lcr --models-root DIR or "
                         "--models original=DIR1,lcr=DIR2")
    specs = []
    for item in items:
        name, sep, path = item.partition("=")
        name = name.strip()
        if not name:
            raise ValueError(f"model item {item!r} has no name; write name=MODEL_DIR")
        if sep:
            folder = Path(path.strip())
        elif models_root is None:
            raise ValueError(f"model {name!r} has no directory; write {name}=MODEL_DIR or pass --models-root")
        else:
            folder = Path(models_root) / name
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: model directory of {name!r} not found")
        specs.append(ModelSpec(name, folder))
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"model name(s) {duplicates} given more than once; each row needs its own name")
    return specs


@dataclass
class BenchmarkModel:
    """A loaded row: models, generator, and what its unlearning record says."""

    spec: ModelSpec
    models: MotionModels
    generator: Generator
    removed_codes: list[int]
    method: str
    tokens_from: str | None = None  # an earlier row whose sampled tokens this row's transformers would reproduce

    @property
    def name(self) -> str:
        """Row name."""
        return self.spec.name


def check_model_specs(specs: Sequence[ModelSpec], evaluator_config: EvaluatorConfig,
                      settings: BenchmarkSettings) -> None:
    """Refuse rows the benchmark cannot score meaningfully, from their config.json alone (before any loading)."""
    for spec in specs:
        config = read_model_config(spec.path)
        if config.vq.dim_pose != evaluator_config.dim_pose:
            raise ValueError(f"{spec.path}: model {spec.name!r} generates {config.vq.dim_pose}-d features but the "
                             f"evaluator takes {evaluator_config.dim_pose}-d features; use an evaluator trained on "
                             "the same feature format")
        record = unlearning_record(config)
        if record is not None and record.concept != settings.concept:
            raise ValueError(f"{spec.path}: model {spec.name!r} was unlearned for concept {record.concept!r}, but the "
                             f"benchmark measures {settings.concept!r}; pass --concept {record.concept} or another "
                             "model")
        if spec.name == "lcr" and not removed_base_codes(config):
            raise ValueError(f"{spec.path}: model 'lcr' has no removed codes for concept {settings.concept!r} (its "
                             "config.json records no LCR unlearning), so its MM-Safe and flag rates would describe "
                             "another method; pass an LCR model directory (`safemotion unlearn lcr`) or rename the row")


def load_benchmark_models(specs: Sequence[ModelSpec], evaluator: Evaluator, settings: BenchmarkSettings,
                          clip_weights: Path | None = None, clip_vocab: Path | None = None) -> list[BenchmarkModel]:
    """Check and load every row; text encoders are shared between rows that use the same one."""
    check_model_specs(specs, evaluator.config, settings)
    device = pick_device(settings.device)
    encoders: dict[str, TextEncoder] = {}
    loaded = []
    for spec in specs:
        models = load_model_dir(spec.path, device=device)
        config = models.config
        record = unlearning_record(config)
        removed = removed_base_codes(config)
        if config.text_encoder not in encoders:
            encoders[config.text_encoder] = load_text_encoder(config.text_encoder, device, clip_weights, clip_vocab)
        generator = Generator(models, encoders[config.text_encoder], settings.sampling, device)
        twin = next((row.name for row in loaded if row.tokens_from is None and same_tokens(row.models, models)), None)
        loaded.append(BenchmarkModel(spec, models, generator, removed, record.method if record else "none", twin))
    return loaded


def same_tokens(a: MotionModels, b: MotionModels) -> bool:
    """Whether two models sample the same tokens for the same features and seeds: equal configs apart from the VQ,
    and equal transformer and length-estimator weights."""
    def token_config(models: MotionModels) -> dict[str, Any]:
        config = models.config.to_dict()
        return {k: v for k, v in config.items() if k not in ("vq", "unlearning", "safety")}

    if token_config(a) != token_config(b):
        return False
    for name in ("mask_transformer", "residual_transformer", "length_estimator"):
        left, right = getattr(a, name), getattr(b, name)
        if (left is None) != (right is None):
            return False
        if left is None:
            continue
        left, right = left.state_dict(), right.state_dict()
        if left.keys() != right.keys() or not all(torch.equal(left[k], right[k]) for k in left):
            return False
    return True


# ---------------------------------------------------------------------------------------------- sets

@dataclass
class EvalSet:
    """One evaluation set: its caption pairs and their fixed text embeddings."""

    name: str
    split_file: Path
    ids: int
    pairs: list[TextMotionPair]
    text_emb: np.ndarray
    batch_size: int
    per_repeat_cap: int | None = None
    clean_text_emb: np.ndarray | None = None  # forget set: captions with the concept words masked
    changed: np.ndarray | None = None

    @property
    def samples_per_repeat(self) -> int:
        """Samples scored per repeat (whole batches, at most the cap)."""
        available = len(self.pairs) if self.per_repeat_cap is None else min(len(self.pairs), self.per_repeat_cap)
        return available // self.batch_size * self.batch_size


def split_file(data: Path, settings: BenchmarkSettings, set_name: str) -> Path:
    """Path of a set's id list, checked to exist."""
    path = split_files(data, settings.concept, settings.rule, settings.split)[SETS.index(set_name)]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {set_name} split missing; write it with `safemotion data split --data {data} "
                                f"--concept {settings.concept} --rule {settings.rule}`")
    return path


def load_eval_set(data: Path, set_name: str, evaluator: Evaluator, settings: BenchmarkSettings) -> EvalSet:
    """Pairs, batch size and text embeddings (plus masked-caption embeddings for the forget set) of one set."""
    path = split_file(data, settings, set_name)
    ids = read_ids(path)
    pairs = load_text_motion_pairs(data, ids)
    order = np.random.default_rng(settings.seed).permutation(len(pairs))
    pairs = [pairs[i] for i in order[:settings.max_samples]]
    if len(pairs) < MIN_SAMPLES:
        raise ValueError(f"{path}: the {set_name} set has {len(pairs)} caption samples of 40-199 frames; the "
                         f"benchmark needs at least {MIN_SAMPLES}")
    tokens = [list(p.tokens) for p in pairs]
    text_emb = evaluator.embed_texts([p.caption for p in pairs], tokens)
    result = EvalSet(set_name, path, len(ids), pairs, text_emb, min(settings.batch_size, len(pairs)),
                     settings.samples_per_repeat)
    if set_name == "forget":
        masked = [mask_concept_words(" ".join(t), settings.concept, settings.rule).split() for t in tokens]
        result.changed = np.array([m != t for m, t in zip(masked, tokens)])
        result.clean_text_emb = evaluator.embed_texts([p.caption for p in pairs], masked)
    return result


# ---------------------------------------------------------------------------------------------- one repeat

def score(eval_set: EvalSet, order: np.ndarray, real_emb: np.ndarray, motion_emb: np.ndarray,
          rng: np.random.Generator) -> dict[str, float]:
    """All metrics of one repeat for one row (`order` selects and orders the set's samples)."""
    text = eval_set.text_emb[order]
    r = r_precision(text, motion_emb, eval_set.batch_size)
    try:
        fid_value = fid(real_emb, motion_emb)
    except ValueError:  # a badly conditioned covariance (very few samples): no number rather than a crash
        fid_value = float("nan")
    scores = {"fid": fid_value, "r1": float(r[0]), "r2": float(r[1]), "r3": float(r[2]),
              "mm_dist": mm_dist(text, motion_emb), "diversity": diversity(motion_emb, rng=rng)}
    if eval_set.clean_text_emb is not None:
        scores["mm_safe"] = mm_safe(eval_set.clean_text_emb[order], motion_emb, eval_set.changed[order],
                                    eval_set.batch_size)
    return scores


def run_repeat(eval_set: EvalSet, set_index: int, repeat: int, rows: Sequence[BenchmarkModel],
               features: dict[str, torch.Tensor], evaluator: Evaluator, seed: int,
               log: Callable[[str], None]) -> dict[str, dict[str, float]]:
    """Metrics of every row (and the real-motion reference) for one repeat of one set."""
    rng = np.random.default_rng([seed, repeat, set_index])
    order = rng.permutation(len(eval_set.pairs))[:eval_set.samples_per_repeat]
    crops = [evaluation_crop(len(eval_set.pairs[i].motion), rng) for i in order]
    real = [eval_set.pairs[i].motion[s:s + n] for i, (s, n) in zip(order, crops)]
    real_emb = evaluator.embed_motions(real)
    reference = []
    for i in order:
        start, length = evaluation_crop(len(eval_set.pairs[i].motion), rng)
        reference.append(eval_set.pairs[i].motion[start:start + length])
    out = {REAL: score(eval_set, order, real_emb, evaluator.embed_motions(reference), rng)}
    seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=len(order))]
    sampled: dict[str, tuple[list[np.ndarray], list[str], float]] = {}
    for row in rows:
        started = time.monotonic()
        if row.tokens_from is None:
            unit = row.models.config.unit_length
            tokens, length_from = row.generator.token_arrays(
                features[row.name][torch.from_numpy(order)], seeds, [n // unit for _, n in crops])
            sampled[row.name] = (tokens, length_from, time.monotonic() - started)
        tokens, length_from, sampling_seconds = sampled[row.tokens_from or row.name]
        generated = row.generator.motions_from_tokens(  # the evaluator reads features: no foot clean-up
            tokens, seeds, length_from, smpl=False, foot_cleanup=False)
        seconds = time.monotonic() - started + (sampling_seconds if row.tokens_from else 0.0)
        motion_emb = evaluator.embed_motions([g.features for g in generated])
        # every row draws the same diversity pairs
        out[row.name] = {**score(eval_set, order, real_emb, motion_emb,
                                 np.random.default_rng([seed, repeat, set_index, 1])),
                         "seconds_per_motion": seconds / len(order)}
        log(f"  {eval_set.name} repeat {repeat + 1}: {row.name} FID {out[row.name]['fid']:.3f} R@1 "
            f"{out[row.name]['r1']:.3f} ({seconds:.1f} s)")
    return out


# ---------------------------------------------------------------------------------------------- flag rates

def flag_rates(rows: Sequence[BenchmarkModel], settings: BenchmarkSettings,
               log: Callable[[str], None]) -> dict[str, Any]:
    """Per row and prompt set (test halves): flagged / generated motions, each signal's rate and every prompt's row, and
    the keyword rule's rate on the prompts."""
    prompts = {name: load_prompt_set(name, "test")[:settings.max_prompts] for name in settings.prompt_sets}
    result: dict[str, Any] = {"keyword_rule": {
        name: _rate(sum(matches_concept(p, settings.concept, settings.rule) for p in texts), len(texts))
        for name, texts in prompts.items()}}
    reference = next((r for r in rows if r.name == "lcr" and r.removed_codes), None) or \
        next((r for r in rows if r.removed_codes), None)
    reference_codebook = None
    if reference is not None and reference.method == "lcr":
        reference_codebook = load_original_codebooks(reference.spec.path).get(0)
    reusable: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        if settings.prompt_variations == 0:
            break
        source = row
        if not row.removed_codes:
            own = row.models.vq.quantizer.layers[0].codebook.detach().cpu()
            shares = reference_codebook is not None and own.shape == reference_codebook.shape and \
                torch.equal(own, reference_codebook.to(own.dtype))
            if not shares:
                result[row.name] = None
                continue
            source = reference
        key = (row.tokens_from or row.name, source.name)
        if key in reusable:  # same tokens, same codes and threshold, no screen that reads the decoded motion
            result[row.name] = reusable[key]
        else:
            result[row.name] = _flag_rows(row, source, prompts, settings)
            if not result[row.name]["screened"]:
                reusable[key] = result[row.name]
        log(f"  flag rates {row.name}: " + ", ".join(f"{k} {v['rate']:.2f}" for k, v in result[row.name].items()
                                                     if isinstance(v, dict)))
    return result


def _flag_rows(row: BenchmarkModel, source: BenchmarkModel, prompts: dict[str, list[str]],
               settings: BenchmarkSettings) -> dict[str, Any]:
    seconds = None if row.models.length_estimator is not None else DEFAULT_PROMPT_SECONDS
    screens = load_screens(source.spec.path, source.models.config)
    out: dict[str, Any] = {"codes_from": source.name, "threshold": safety_settings(source.models.config).threshold,
                           "calibrated": safety_settings(source.models.config).calibrated,
                           "screened": screens is not None}
    for name, texts in prompts.items():
        out[name] = prompt_set_flags(row.generator, source.models, name, texts, settings.prompt_variations, seconds,
                                     settings.seed, screens).to_dict()
    return out


def _rate(flagged: int, total: int) -> dict[str, Any]:
    return {"rate": flagged / total if total else float("nan"), "flagged": int(flagged), "total": int(total)}


# ---------------------------------------------------------------------------------------------- whole run

def git_commit(path: Path = Path(__file__).resolve().parents[1]) -> str:
    """HEAD commit of the source checkout, '+dirty' when files of the `safemotion` package differ from it (new files
    included), or 'unknown' outside a git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode:
            return "unknown"
        status = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "."], capture_output=True,
                                text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def run_benchmark(specs: Sequence[ModelSpec], data: str | Path, evaluator_dir: str | Path = DEFAULT_EVALUATOR,
                  settings: BenchmarkSettings | None = None, clip_weights: Path | None = None,
                  clip_vocab: Path | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark and return its JSON-ready result (write it with `safemotion.eval.report.write_report`)."""
    settings = settings or BenchmarkSettings()
    settings.validate()
    data = Path(data)
    started = time.monotonic()
    commit = git_commit()  # the code that runs, not whatever is checked out when it ends
    if not (data / "new_joint_vecs").is_dir():
        raise FileNotFoundError(f"{data}: not a HumanML3D-layout dataset (no new_joint_vecs folder)")
    evaluator_config = read_evaluator_config(evaluator_dir)
    if evaluator_config.dim_pose != FEATURE_DIM:
        raise ValueError(f"evaluator {evaluator_dir} takes {evaluator_config.dim_pose}-d motion features but the "
                         f"dataset {data} holds {FEATURE_DIM}-d HumanML3D features; use a matching evaluator")
    check_model_specs(specs, evaluator_config, settings)
    for set_name in settings.sets:
        split_file(data, settings, set_name)
    evaluator = load_evaluator(evaluator_dir, device=pick_device(settings.device))
    rows = load_benchmark_models(specs, evaluator, settings, clip_weights, clip_vocab)
    notes = []
    if settings.quick:
        notes.append("quick smoke run: few samples and 2 repeats; the numbers are not benchmark results")
    sets = [load_eval_set(data, name, evaluator, settings) for name in settings.sets]
    results: dict[str, Any] = {}
    for set_index, eval_set in enumerate(sets):
        if eval_set.batch_size < settings.batch_size:
            notes.append(f"the {eval_set.name} set has {len(eval_set.pairs)} samples, fewer than a batch of "
                         f"{settings.batch_size}: scored in one batch of {eval_set.batch_size}, so R-precision "
                         "chance levels differ from the paper's and FID rests on very few samples")
        features = {row.name: row.generator.encode_prompts([p.caption for p in eval_set.pairs]).cpu()
                    for row in rows}
        per_repeat = [run_repeat(eval_set, set_index, r, rows, features, evaluator, settings.seed, log)
                      for r in range(settings.repeats)]
        results[eval_set.name] = _summarise(per_repeat, [REAL] + [row.name for row in rows])
        if any(np.isnan(v) for row in results[eval_set.name].values() for v in row["fid"]["values"]):
            notes.append(f"{eval_set.name} set: FID could not be computed in some repeats (badly conditioned "
                         "covariance); those repeats are NaN")
    flags = flag_rates(rows, settings, log)
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "command": portable_command(sys.argv),
        "platform": {"python": platform.python_version(), "torch": torch.__version__,
                     "device": str(pick_device(settings.device)), "threads": torch.get_num_threads(),
                     "cpu": platform.processor() or platform.machine()},
        "settings": settings.to_dict(),
        "data": {"path": portable_path(data), "sets": {s.name: {
            "file": portable_path(s.split_file), "sha256": file_sha256(s.split_file), "ids": s.ids, "samples": len(s.pairs),
            "batch_size": s.batch_size,
            "samples_per_repeat": s.samples_per_repeat,
            **({"masked_captions": int(s.changed.sum())} if s.changed is not None else {})} for s in sets}},
        "evaluator": {"path": portable_path(evaluator_dir), "config": evaluator.config.to_dict()},
        "models": [{"name": r.name, "path": portable_path(r.spec.path), "method": r.method,
                    "removed_base_codes": len(r.removed_codes), "text_encoder": r.models.config.text_encoder}
                   for r in rows],
        "results": results,
        "flag_rates": flags,
        "notes": notes,
        "seconds": time.monotonic() - started,
    }


def report_settings(report: dict[str, Any], repeats: int | None = None, device: str = "cpu") -> BenchmarkSettings:
    """The settings a report was made with (sampling settings it predates take their defaults), for a run that adds
    rows to it; `repeats` (default the report's) may be fewer than the report's, not more."""
    saved = dict(report["settings"])
    known = {f.name for f in dataclasses.fields(SamplingConfig)}
    sampling = SamplingConfig(**{k: v for k, v in saved.pop("sampling").items() if k in known})
    fields = {f.name for f in dataclasses.fields(BenchmarkSettings)}
    settings = BenchmarkSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in fields})
    if repeats is not None and repeats > settings.repeats:
        raise ValueError(f"repeats is {repeats} but the report has {settings.repeats}; rows added to it may have as "
                         "many repeats or fewer (the first ones, with the same crops)")
    return dataclasses.replace(settings, sampling=sampling, device=device,
                               repeats=settings.repeats if repeats is None else repeats)


def require_report_sets(report: dict[str, Any], data: str | Path, settings: BenchmarkSettings,
                        where: str = "the report") -> None:
    """Raise ValueError before any work when `data` does not hold the split files the report scored."""
    for set_name, info in report["data"]["sets"].items():
        path = split_file(Path(data), settings, set_name)
        if file_sha256(path) != info["sha256"]:
            raise ValueError(f"{path} differs from the {set_name} split {where} scored ({info['file']}); pass the "
                             "dataset the report was made from")


def add_rows(report: dict[str, Any], added: dict[str, Any], where: str = "the report") -> dict[str, Any]:
    """`report` with the model rows of `added` (a run with `report_settings(report)`) appended; ValueError when the
    runs differ in settings, split files, evaluator or real-motion reference, or share a row name."""
    report, added = (json.loads(json.dumps(r)) for r in (report, added))  # as written: lists, not tuples
    names = [m["name"] for m in added["models"]]
    clash = sorted(set(names) & {m["name"] for m in report["models"]})
    if clash:
        raise ValueError(f"{where} already has row(s) {clash}; give the added rows other names")
    ignored = {"repeats", "device", "sampling"}
    for key in sorted(set(report["settings"]) | set(added["settings"])):
        if key not in ignored and report["settings"].get(key) != added["settings"].get(key):
            raise ValueError(f"{where} was made with {key} = {report['settings'].get(key)!r}, the added run with "
                             f"{added['settings'].get(key)!r}; run it with the report's settings (report_settings)")
    for key, value in report["settings"]["sampling"].items():
        if added["settings"]["sampling"].get(key) != value:
            raise ValueError(f"{where} decodes with {key} = {value!r}, the added run with "
                             f"{added['settings']['sampling'].get(key)!r}")
    repeats = added["settings"]["repeats"]
    if repeats > report["settings"]["repeats"]:
        raise ValueError(f"the added run has {repeats} repeats, {where} {report['settings']['repeats']}")
    for set_name, info in report["data"]["sets"].items():
        other = added["data"]["sets"].get(set_name)
        if other is None or other["sha256"] != info["sha256"] or other["samples"] != info["samples"]:
            raise ValueError(f"the added run did not score the {set_name} set of {where} ({info['file']}, sha256 "
                             f"{info['sha256'][:12]}…); pass the same dataset")
    if added["evaluator"]["config"] != report["evaluator"]["config"]:
        raise ValueError(f"the added run used another evaluator than {where} ({report['evaluator']['path']})")
    for set_name, rows in report["results"].items():
        for metric, entry in rows[REAL].items():
            values = added["results"][set_name][REAL][metric]["values"]
            reference = entry["values"][:repeats]
            if not np.allclose(values, reference, rtol=REAL_RTOL, atol=REAL_ATOL, equal_nan=True):
                gap = float(np.nanmax(np.abs(np.subtract(values, reference))))
                raise ValueError(f"the {set_name} set's real-motion {metric} differs from {where}'s by up to {gap:.3g}: "
                                 "the added run scored other crops (another dataset build or benchmark code), so its "
                                 "rows would not be comparable; run every row afresh")
    merged = {**report, "models": report["models"] + added["models"],
              "results": {s: {**rows, **{n: added["results"][s][n] for n in names}}
                          for s, rows in report["results"].items()},
              "flag_rates": {**report["flag_rates"], **{n: added["flag_rates"][n] for n in names
                                                        if n in added["flag_rates"]}},
              "notes": report["notes"] + [n for n in added["notes"] if n not in report["notes"]]}
    merged["additions"] = report.get("additions", []) + [{
        "rows": names, "repeats": repeats, "sampling": added["settings"]["sampling"],
        **{k: added[k] for k in ("created", "commit", "command", "platform", "seconds")}}]
    return merged


def _summarise(per_repeat: list[dict[str, dict[str, float]]], names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        metrics = per_repeat[0][name].keys()
        out[name] = {}
        for metric in metrics:
            values = [repeat[name][metric] for repeat in per_repeat]
            finite = [v for v in values if np.isfinite(v)]
            summary = mean_and_ci(finite) if finite else None
            out[name][metric] = {"mean": summary.mean if summary else float("nan"),
                                 "ci95": summary.ci95 if summary else float("nan"), "values": values}
    return out
