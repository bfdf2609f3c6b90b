"""Generation benchmark (issue 3): latency at batch 1 and throughput at batch 32 on the CPU.

Models have random weights (speed does not depend on training); text features are precomputed random vectors, so the
text encoder is not timed. Settings: 10 decoding steps, guidance 4 (base) / 5 (residual), top-k 0.9, 196 frames
(49 tokens). A "motion" is timed from text features to joint positions (base + residual tokens, VQ decoding,
un-normalisation, recover_from_ric) without the foot clean-up that generation applies by default (random weights give
no meaningful feet); the SMPL fit is timed separately. Each size runs with the transformers in fp32
and, where the CPU has native bfloat16 (AVX512-BF16 or AMX), in bf16, and in int8 (dynamically quantized encoder
linears).

    .venv/bin/python bench/generate.py --threads 2 --write
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from safemotion.decoding import SamplingConfig, decode_base, decode_residual
from safemotion.generate import Generator, bf16_is_native
from safemotion.models.model_dir import build_models, parameter_count
from safemotion.motion.smpl import joints_to_smpl
from safemotion.train.presets import preset
from results_md import machine, publish

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Generation (issue 3)"
TOKENS = 49
THROUGHPUT_BATCH = 32
QUIET = 0.10  # a timing counts as uncontended when other processes used < 10% of the CPUs meanwhile
SAMPLING = SamplingConfig(time_steps=10, cond_scale=4.0, residual_cond_scale=5.0, topk_filter_thres=0.9)


def random_generator(size: str, precision: str = "fp32") -> Generator:
    """A Generator over randomly initialised models of a preset size (non-zero codebooks)."""
    torch.manual_seed(0)
    models = build_models(preset(size))
    for layer in models.vq.quantizer.layers:
        layer.codebook.normal_()
    sampling = dataclasses.replace(SAMPLING, precision=precision)
    return Generator(models.eval(), None, sampling, "cpu", batch_size=THROUGHPUT_BATCH)


def _cpu_jiffies() -> tuple[int, int]:
    """(busy jiffies of the whole machine, jiffies used by this process)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # minus idle and iowait
    own = sum(int(x) for x in Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[11:15])
    return busy, own


def timed(fn) -> tuple[float, float]:
    """(wall seconds, share of the machine's CPUs that other processes used meanwhile)."""
    busy0, own0 = _cpu_jiffies()
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    busy1, own1 = _cpu_jiffies()
    others = ((busy1 - busy0) - (own1 - own0)) / (os.sysconf("SC_CLK_TCK") * wall * os.cpu_count())
    return wall, max(others, 0.0)


def cpu_seconds(fn) -> float:
    """CPU time this process spent in fn()."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def timed_runs(fn, count: int, deadline: float) -> tuple[list[float], list[float], int]:
    """`count` timings taken while other processes used < QUIET of the CPUs (retrying contended runs until
    `deadline`); returns (quiet timings, all timings, contended runs)."""
    quiet, everything, contended = [], [], 0
    while len(quiet) < count:
        wall, others = timed(fn)
        everything.append(wall)
        if others < QUIET:
            quiet.append(wall)
        else:
            contended += 1
            if time.monotonic() > deadline:
                break
            time.sleep(2.0)
    return quiet, everything, contended


def bench_size(size: str, precision: str, repeats: int, batches: int, budget: float) -> dict:
    """Latency percentiles, throughput and a per-part breakdown for one model size, within `budget` seconds."""
    deadline = time.monotonic() + budget
    generator = random_generator(size, precision)
    sampling = generator.sampling
    text_dim = generator.models.config.mask_transformer.text_dim
    features = torch.randn(THROUGHPUT_BATCH, text_dim, generator=torch.Generator().manual_seed(1))
    seeds = iter(range(1, 10**6))

    def one():
        return generator.generate_from_features(features[:1], [next(seeds)], [TOKENS], smpl=False, foot_cleanup=False)

    def batch():
        first = next(seeds) * THROUGHPUT_BATCH
        return generator.generate_from_features(features, list(range(first, first + THROUGHPUT_BATCH)),
                                                [TOKENS] * THROUGHPUT_BATCH, smpl=False, foot_cleanup=False)

    one()  # warm-up
    latencies, all_latencies, contended = timed_runs(one, repeats, deadline - budget / 2)
    batch()
    batch_times, all_batches, contended_batches = timed_runs(batch, batches, deadline)

    lengths = torch.tensor([TOKENS])
    models = generator.models
    gens = lambda: [torch.Generator().manual_seed(5)]  # noqa: E731
    base = decode_base(models.mask_transformer, features[:1], lengths, gens(), sampling)
    ids = decode_residual(models.residual_transformer, base, features[:1], lengths, gens(), sampling)
    parts = {
        "base layer (10 steps)": lambda: decode_base(models.mask_transformer, features[:1], lengths, gens(), sampling),
        "residual layers (5)": lambda: decode_residual(models.residual_transformer, base, features[:1], lengths, gens(),
                                                       sampling),
        "VQ decode + joints": lambda: generator.decode_tokens([ids[0].numpy()]),
    }
    part_times = {name: min(timed(fn)[0] for _ in range(3)) for name, fn in parts.items()}

    # CPU seconds of this process on one thread: unlike wall time, hardly changed by other processes' load.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cpu_one = min(cpu_seconds(one) for _ in range(3))
    cpu_batch = cpu_seconds(batch) / THROUGHPUT_BATCH
    torch.set_num_threads(threads)
    joints = one()[0].joints
    smpl = min(timed(lambda: joints_to_smpl(joints))[0] for _ in range(3))
    params = sum(parameter_count(m) for m in models.components().values())

    def percentiles(values: list[float]) -> tuple[float, float]:
        return (float(np.percentile(values, 50)), float(np.percentile(values, 90))) if values else (float("nan"),) * 2

    return {
        "size": size, "precision": precision, "params": params, "quiet": percentiles(latencies),
        "all": percentiles(all_latencies),
        "runs": (len(latencies), len(all_latencies)), "contended": contended,
        "throughput": THROUGHPUT_BATCH / statistics.median(batch_times) if batch_times else float("nan"),
        "throughput_all": THROUGHPUT_BATCH / statistics.median(all_batches),
        "batch_runs": (len(batch_times), len(all_batches)), "contended_batches": contended_batches,
        "parts": part_times, "smpl": smpl, "cpu_one": cpu_one, "cpu_batch": cpu_batch,
    }


def report(results: list[dict], before: str, after: str, threads: int) -> str:
    """The markdown section."""
    lines = [
        SECTION, "",
        "`bench/generate.py`: random-weight models, precomputed text features, 10 steps, CFG 4 (base) / 5 (residual), "
        "top-k 0.9, categorical sampling, 196 frames (49 tokens), "
        f"`torch.set_num_threads({threads})`. Latency = one motion at batch 1 (text features → joints); throughput = "
        "a batch of 32. A timing counts as quiet when other processes used < 10% of the CPUs meanwhile (from "
        "/proc/stat); contended runs are retried and reported separately. Parts are the fastest of 3 runs at "
        "batch 1; the SMPL fit (numpy, per 196-frame motion) is not part of the motion timings. The last column is "
        "CPU time per motion with one thread (batch 1 / batch 32, from `time.process_time`), which other processes' "
        "load hardly changes; half of it is the ideal two-thread time.", "",
        f"- Machine at start: {before}", f"- Machine at end: {after}", "",
        "| model | precision | parameters | latency p50 / p90 (s), quiet runs | latency p50 / p90 (s), all runs | "
        "throughput batch 32 (motions/s), quiet / all | base / residual / decode (s) | SMPL fit (s) | "
        "1-thread CPU s per motion, batch 1 / 32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        parts = " / ".join(f"{v:.3f}" for v in r["parts"].values())
        lines.append(
            f"| {r['size']} | {r['precision']} | {r['params'] / 1e6:.1f} M | {r['quiet'][0]:.3f} / {r['quiet'][1]:.3f} "
            f"({r['runs'][0]} runs) | {r['all'][0]:.3f} / {r['all'][1]:.3f} ({r['runs'][1]} runs) | "
            f"{r['throughput']:.2f} ({r['batch_runs'][0]} batches) / {r['throughput_all']:.2f} "
            f"({r['batch_runs'][1]}) | {parts} | {r['smpl']:.3f} | {r['cpu_one']:.3f} / {r['cpu_batch']:.3f} |")
    lines += ["", "Ideal two-thread figures derived from the one-thread CPU time (an estimate, not a measurement: "
              "perfect scaling over both cores, no other load):", ""]
    lines += [f"- {r['size']}, {r['precision']}: ≈ {r['cpu_one'] / 2:.2f} s per motion at batch 1, "
              f"≈ {2 / r['cpu_batch']:.1f} motions/s "
              "at batch 32." for r in results]
    fp32 = {r["size"]: r for r in results if r["precision"] == "fp32"}
    speedups = [f"{r['size']} {r['precision']} {fp32[r['size']]['quiet'][0] / r['quiet'][0]:.2f}× at batch 1, "
                f"{r['throughput'] / fp32[r['size']]['throughput']:.2f}× at batch 32"
                for r in results if r["precision"] != "fp32" and r["size"] in fp32]
    if speedups:
        lines += ["", "Against fp32 in this run (quiet p50 latency, quiet throughput): " + "; ".join(speedups) + "."]
    lines += ["", "Targets (this 2-core machine): official size ≤ 0.5 s per motion at batch 1 and ≥ 2.5 motions/s at "
              "batch 32 (the official implementation: 0.56 s and 3.9 motions/s); mini ≤ 0.1 s per motion at batch 1.",
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", nargs="+", default=["official", "mini"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"],
                        help="transformer precisions; bf16 is skipped where the CPU would emulate it")
    parser.add_argument("--repeats", type=int, default=8, help="batch-1 runs for the latency percentiles")
    parser.add_argument("--batches", type=int, default=2, help="batch-32 runs for the throughput")
    parser.add_argument("--budget", type=float, default=120, help="seconds per model size, retries included")
    parser.add_argument("--write", action="store_true", help=f"write the section into {RESULTS}")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    precisions = [p for p in args.precisions if p != "bf16" or bf16_is_native(torch.device("cpu"))]
    if precisions != args.precisions:
        print("bf16 skipped: this CPU has neither AVX512-BF16 nor AMX", file=sys.stderr)
    before = machine()
    results = []
    for size in args.sizes:
        for precision in precisions:
            results.append(bench_size(size, precision, args.repeats, args.batches, args.budget))
            print(results[-1], flush=True)
    text = report(results, before, machine(), args.threads)
    publish(SECTION, text, write=args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
