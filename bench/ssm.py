"""Transformer vs Mamba vs SeRpEnt on ListOps, Pathfinder and byte-level language modelling: equal parameter counts,
one recipe per task, 3 seeds; writes a report (markdown + JSON + plot) to --out.

    .venv/bin/python bench/ssm.py --scale cpu --out reports/ssm     # hours on a small CPU
    .venv/bin/python bench/ssm.py --scale gpu --out reports/ssm     # CUDA only
    .venv/bin/python bench/ssm.py --scale smoke --out /tmp/ssm      # minutes: checks the pipeline, numbers mean nothing
    .venv/bin/python bench/ssm.py --scale cpu --task pathfinder     # one task (listops | pathfinder | lm | all)

Models are bench/listops.py's: embedding → N pre-norm residual blocks (Transformer layer, bidirectional Mamba or
bidirectional SeRpEnt; causal versions for language modelling) → LayerNorm → mean pooling + class head, or per-token
byte logits. Widths are chosen per model for the task's parameter target. Recipe: AdamW (betas 0.9, 0.98), linear
warm-up then cosine decay, gradient clipping 1.0, the same data order for every model of a seed.

Tasks: ListOps (LRA sampler, `safemotion.data.listops`, length filter per scale), Pathfinder (`safemotion.data.pathfinder`,
32×32 → 1,024 pixel tokens, balanced labels), byte-level LM on the Python stdlib sources (`safemotion.data.stdlib_bytes`,
bits per byte on the test files). The paper's own model sizes were not read (../shared/reference/serpent_ssm.md); the
gpu scale follows the B2S6 LRA recipes quoted there (depth, width, lr, batch) and LRA's data sizes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

from listops import MODELS, Classifier, Recipe, count_parameters, lr_factor, optimizer_for, width_for  # noqa: E402

from safemotion.atomic_dir import replace_dir  # noqa: E402
from safemotion.data import listops as listops_data  # noqa: E402
from safemotion.data import pathfinder, stdlib_bytes  # noqa: E402

TASKS = ("listops", "pathfinder", "lm")


@dataclass(frozen=True)
class TaskSettings:
    """Data and training sizes of one task at one scale."""

    steps: int
    batch_size: int
    params: int
    layers: int
    lr: float
    train_size: int  # examples (classification) or training windows drawn per step × steps (LM: unused)
    test_size: int  # examples (classification) or test bytes evaluated (LM; 0 = all)
    length: int  # max tokens (ListOps filter bound / LM window); Pathfinder: image side
    min_length: int = 0  # ListOps filter lower bound
    eval_every: int = 0  # steps between test evaluations for the curve (0 = steps // 10)


SCALES: dict[str, dict[str, TaskSettings]] = {
    "smoke": {
        "listops": TaskSettings(6, 4, 6_000, 1, 3e-3, 48, 16, 48, 10),
        "pathfinder": TaskSettings(6, 4, 6_000, 1, 3e-3, 24, 8, 32),
        "lm": TaskSettings(6, 4, 6_000, 1, 3e-3, 0, 4_096, 64),
    },
    # Not yet run. Extrapolated from bench/ssm_scan.py (≈ 1 s per step at 32 × 512 with the native scan): roughly a day
    # for all 27 runs on a 2-core CPU. ListOps keeps trees with 32 < tokens < 512.
    "cpu": {
        "listops": TaskSettings(3_000, 32, 100_000, 2, 3e-3, 40_000, 2_000, 512, 32),
        "pathfinder": TaskSettings(3_000, 32, 100_000, 2, 2e-3, 40_000, 2_000, 32),
        "lm": TaskSettings(3_000, 16, 100_000, 2, 2e-3, 0, 0, 512),
    },
    # LRA data sizes; depth / width-level parameter targets after B2S6 Table 5 (ListOps 8×128, Pathfinder 6×256).
    "gpu": {
        "listops": TaskSettings(50_000, 32, 1_000_000, 8, 8e-3, 96_000, 2_000, 2_000, 500),
        "pathfinder": TaskSettings(50_000, 48, 3_000_000, 6, 4e-3, 160_000, 2_000, 32),
        "lm": TaskSettings(50_000, 32, 3_000_000, 6, 1e-3, 0, 0, 1_024),
    },
}


def classification_data(task: str, settings: TaskSettings, seed: int) -> dict:
    """Train/test token ids and labels plus the model's vocabulary, classes and padding id."""
    count = settings.train_size + settings.test_size
    if task == "listops":
        config = listops_data.ListOpsConfig(min_length=settings.min_length, max_length=settings.length)
        examples = listops_data.generate_examples(count, seed, config)
        ids = listops_data.encode_batch([e.source for e in examples], settings.length + 1)
        targets = np.array([e.target for e in examples], dtype=np.int64)
        model = {"vocab_size": len(listops_data.VOCAB), "n_out": listops_data.N_CLASSES, "pad_id": listops_data.PAD_ID}
        max_length = settings.length + 1
    else:
        config = pathfinder.PathfinderConfig(size=settings.length, **_small_pathfinder(settings.length))
        ids, targets = pathfinder.encode_images(pathfinder.generate_examples(count, seed, config))
        model = {"vocab_size": 256, "n_out": 2, "pad_id": None}
        max_length = config.tokens
    n = settings.train_size
    majority = float(np.bincount(targets[n:]).max() / len(targets[n:]))
    return {"train": (ids[:n], targets[:n]), "test": (ids[n:], targets[n:]), "model": model,
            "max_length": max_length, "majority": majority}


def _small_pathfinder(size: int) -> dict:
    # Shorter paths on canvases under 32 pixels (smoke scale) so that rejection sampling finds room.
    return {} if size >= 32 else {"path_dashes": 3, "distractor_dashes": 2, "n_distractors": 1}


def _trim(ids: np.ndarray, pad_id: int | None) -> np.ndarray:
    return ids if pad_id is None else ids[:, : int((ids != pad_id).sum(axis=1).max())]


def accuracy(model: Classifier, ids: np.ndarray, targets: np.ndarray, batch_size: int = 64) -> float:
    """Test accuracy of a classifier."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(ids), batch_size):
            logits = model(torch.from_numpy(_trim(ids[start : start + batch_size], model.pad_id)))
            correct += int((logits.argmax(-1).numpy() == targets[start : start + batch_size]).sum())
    model.train()
    return correct / len(ids)


def lm_bits_per_byte(model: Classifier, windows: np.ndarray, batch_size: int = 16) -> float:
    """Bits per byte over consecutive test windows (every byte after each window's first is predicted once)."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            batch = torch.from_numpy(windows[start : start + batch_size])
            logits = model(batch[:, :-1])
            total += float(F.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1), reduction="sum"))
    model.train()
    return stdlib_bytes.bits_per_byte(total, windows[:, 1:].size)


def run(task: str, kind: str, settings: TaskSettings, data: dict, seed: int, scan: str, device: str) -> dict:
    """Train one model on one task with one seed; returns its final metric, curve, size and time per step."""
    torch.manual_seed(seed)
    model_args = data["model"]
    d = width_for(kind, settings.params, settings.layers, data["max_length"], scan, **model_args)
    model = Classifier(kind, d, settings.layers, data["max_length"], scan, **model_args).to(device)
    recipe = Recipe(settings.steps, settings.batch_size, settings.lr, 0.01, 0.1, settings.layers, settings.params, scan)
    optimizer = optimizer_for(model, recipe)
    rng = np.random.default_rng(seed)
    eval_every = settings.eval_every or max(1, settings.steps // 10)
    curve, step_times, losses = [], [], []
    for step in range(settings.steps):
        if task == "lm":
            batch = torch.from_numpy(stdlib_bytes.sample_windows(data["train"], settings.length, settings.batch_size, rng))
            inputs, targets = batch[:, :-1], batch[:, 1:]
        else:
            rows = rng.integers(0, len(data["train"][0]), size=settings.batch_size)
            inputs = torch.from_numpy(_trim(data["train"][0][rows], model_args["pad_id"]))
            targets = torch.from_numpy(data["train"][1][rows])
        inputs, targets = inputs.to(device), targets.to(device)
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * lr_factor(step, recipe)
        start = time.perf_counter()
        logits = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step_times.append(time.perf_counter() - start)
        losses.append(loss.item())
        if (step + 1) % eval_every == 0 or step + 1 == settings.steps:
            curve.append((step + 1, evaluate(task, model, data)))
            print(f"{task} {kind} seed {seed} step {step + 1}: loss {np.mean(losses[-eval_every:]):.3f} "
                  f"test {curve[-1][1]:.4f} ({np.median(step_times[-eval_every:]):.3f} s/step)", flush=True)
    return {"task": task, "model": kind, "seed": seed, "width": d, "params": count_parameters(model),
            "metric": curve[-1][1], "curve": curve, "median_step_s": float(np.median(step_times)),
            "train_loss_last": float(np.mean(losses[-eval_every:]))}


def evaluate(task: str, model: Classifier, data: dict) -> float:
    """The task's test metric: accuracy, or bits per byte for the LM."""
    if task == "lm":
        return lm_bits_per_byte(model, data["test"])
    return accuracy(model, *data["test"])


def task_data(task: str, settings: TaskSettings, seed: int) -> dict:
    """Everything a task's runs need (data is seeded by the first seed only: every model and seed sees one data set)."""
    if task != "lm":
        return classification_data(task, settings, seed)
    test = stdlib_bytes.to_ids(stdlib_bytes.load_split("test"))
    if settings.test_size:
        test = test[: settings.test_size + 1]
    return {"train": stdlib_bytes.to_ids(stdlib_bytes.load_split("train")),
            "test": stdlib_bytes.eval_windows(test, settings.length),
            "model": {"vocab_size": 256, "n_out": 256, "pad_id": None, "causal": True},
            "max_length": settings.length, "corpus": stdlib_bytes.corpus_fingerprint()}


def summarise(results: list[dict]) -> list[dict]:
    """Mean ± std (over seeds) of the final metric and time per step, per task and model."""
    rows = []
    for task in TASKS:
        for kind in MODELS:
            runs = [r for r in results if r["task"] == task and r["model"] == kind]
            if runs:
                metric = np.array([r["metric"] for r in runs])
                rows.append({"task": task, "model": kind, "seeds": len(runs), "params": runs[0]["params"],
                             "width": runs[0]["width"], "mean": float(metric.mean()), "std": float(metric.std(ddof=0)),
                             "median_step_s": float(np.median([r["median_step_s"] for r in runs]))})
    return rows


def plot(results: list[dict], path: Path) -> bool:
    """Test metric against steps, one panel per task, mean over seeds per model; False (nothing drawn) without
    matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r["task"] == t for r in results)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for kind in MODELS:
            curves = [r["curve"] for r in results if r["task"] == task and r["model"] == kind]
            if curves:
                steps = [s for s, _ in curves[0]]
                values = np.array([[v for _, v in c] for c in curves])
                ax.plot(steps, values.mean(0), label=kind)
                ax.fill_between(steps, values.min(0), values.max(0), alpha=0.2)
        ax.set_title(task)
        ax.set_xlabel("step")
        ax.set_ylabel("test bits per byte" if task == "lm" else "test accuracy")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(out: Path, payload: dict) -> None:
    """report.md, report.json and plots/curves.png (or, without matplotlib, only the curves in report.json), put in
    place as one folder (no half-written report)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "plots").mkdir()
        plotted = plot(payload["results"], tmp / "plots" / "curves.png")
        (tmp / "report.json").write_text(json.dumps(payload, indent=2))
        lines = [f"# SSM comparison ({payload['scale']} scale)", "",
                 f"`{payload['command']}` — {payload['machine']}, torch {payload['torch']}, scan {payload['scan']}.",
                 "", "| task | model | params | width | metric (mean ± std over seeds) | seeds | s/step (median) |",
                 "|---|---|---|---|---|---|---|"]
        for row in payload["summary"]:
            unit = "bits/byte" if row["task"] == "lm" else "accuracy"
            lines.append(f"| {row['task']} | {row['model']} | {row['params']:,} | {row['width']} | "
                         f"{row['mean']:.4f} ± {row['std']:.4f} {unit} | {row['seeds']} | {row['median_step_s']:.3f} |")
        lines += ["", "Settings per task:", ""]
        lines += [f"- {task}: {json.dumps(settings)}" for task, settings in payload["settings"].items()]
        if "majority" in payload:
            lines += ["", "Majority-class test accuracy: " + ", ".join(f"{t} {v:.3f}" for t, v in payload["majority"].items())]
        if plotted:
            lines += ["", "![curves](plots/curves.png)", ""]
        else:
            lines += ["", "matplotlib is not installed: no plot; the curves (step, metric) are in report.json's results.", ""]
        (tmp / "report.md").write_text("\n".join(lines))
        tmp.chmod(0o755)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), required=True)
    parser.add_argument("--task", nargs="+", choices=(*TASKS, "all"), default=["all"], help="one or more tasks, or all")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, help="override every task's step count")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("reports/ssm"))
    args = parser.parse_args()

    if args.scale == "gpu" and not torch.cuda.is_available():
        parser.error("--scale gpu needs CUDA (no GPU here); use --scale cpu")
    device = "cuda" if args.scale == "gpu" else "cpu"
    torch.set_num_threads(args.threads)
    scan = "auto"  # chunked on CUDA, the native C kernel on CPU (or the PyTorch loop where it cannot be built)
    tasks = TASKS if "all" in args.task else tuple(t for t in TASKS if t in args.task)
    settings = {t: SCALES[args.scale][t] if args.steps is None else replace(SCALES[args.scale][t], steps=args.steps)
                for t in tasks}
    results, majority, corpus = [], {}, None
    for task in tasks:
        start = time.perf_counter()
        data = task_data(task, settings[task], args.seeds[0])
        print(f"{task}: data ready in {time.perf_counter() - start:.1f} s", flush=True)
        if "majority" in data:
            majority[task] = data["majority"]
        corpus = data.get("corpus", corpus)
        for seed in args.seeds:
            for kind in args.models:
                results.append(run(task, kind, settings[task], data, seed, scan, device))
    payload = {"scale": args.scale, "command": "bench/ssm.py " + " ".join(sys.argv[1:]), "scan": scan,
               "machine": f"{platform.machine()} {os.cpu_count()} cores" + (f", {torch.cuda.get_device_name()}" if device == "cuda" else ""),
               "torch": torch.__version__, "python": platform.python_version(), "loadavg_end": os.getloadavg(),
               "settings": {t: asdict(s) for t, s in settings.items()}, "majority": majority, "lm_corpus": corpus,
               "summary": summarise(results), "results": results}
    write_report(args.out, payload)
    print((args.out / "report.md").read_text())


if __name__ == "__main__":
    main()
