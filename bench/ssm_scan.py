"""Selective-scan implementations timed per training step of bench/listops.py's classifiers (interleaved, one process).

For each model (bidirectional Mamba, bidirectional SeRpEnt; ListOps recipe widths for --params) and each scan
(`sequential` PyTorch path with the autograd loop = the old default, `native` fused C kernels, `chunked` parallel
scan), one training step =
forward + cross-entropy + backward + AdamW step on a random batch of ListOps token ids (batch × length, no padding).
The variants run interleaved (round-robin, after one warm-up step each) from identical weights, so machine load hits
them alike; prints medians, p90s and the speed-up of each variant over `sequential`, by wall clock and by the process's
CPU time (the steadier figure on a shared machine), and the load average. Then the
scan alone (forward + backward of one direction at the Mamba model's shapes: batch × length × d_inner, state 16),
timed the same way, to separate the scan from the rest of the step.

    .venv/bin/python bench/ssm_scan.py --batch-size 32 --length 512 --repeats 5 --out runs/ssm_scan.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

from listops import Classifier, Recipe, count_parameters, optimizer_for, width_for, write_json  # noqa: E402

from safemotion.data.listops import N_CLASSES, VOCAB  # noqa: E402
from safemotion.models.ssm import selective_scan_chunked, selective_scan_native, selective_scan_sequential  # noqa: E402

SCANS = ("sequential", "native", "chunked")
SCAN_FUNCTIONS = {"sequential": selective_scan_sequential, "native": selective_scan_native, "chunked": selective_scan_chunked}


def timed(call) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of call() (on a shared machine the CPU time is the steadier measure)."""
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ids: torch.Tensor, targets: torch.Tensor) -> None:
    """One forward + backward + optimizer step."""
    loss = F.cross_entropy(model(ids), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def scan_step(scan: str, inputs: list[torch.Tensor], weight: torch.Tensor) -> None:
    """One forward + backward of the scan alone."""
    y = SCAN_FUNCTIONS[scan](*inputs)
    torch.autograd.grad((y * weight).sum(), inputs)


def scan_inputs(batch: int, length: int, channels: int, state: int) -> list[torch.Tensor]:
    """Random scan inputs with Mamba-like ranges (Δ in (0, ~1), A = -(1..state))."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(batch, length, channels, generator=g)
    delta = F.softplus(torch.randn(batch, length, channels, generator=g) - 2.0)
    A = -torch.arange(1, state + 1, dtype=torch.float32).repeat(channels, 1)
    B, C = (torch.randn(batch, length, state, generator=g) / state**0.5 for _ in range(2))
    D = torch.ones(channels)
    return [t.requires_grad_() for t in (u, delta, A, B, C, D)]


def interleaved(variants: dict, repeats: int, label: str) -> dict[str, list[tuple[float, float]]]:
    """Time each variant's callable round-robin, repeats + 1 times (wall, CPU); the first round is a warm-up, not kept."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for repeat in range(repeats + 1):
        for name, call in variants.items():
            wall, cpu = timed(call)
            if repeat:
                times[name].append((wall, cpu))
            print(f"{label} {name} round {repeat}: {wall:.3f} s wall, {cpu:.3f} s CPU", flush=True)
    return times


def rows(label: str, width: int, params: int, times: dict[str, list[tuple[float, float]]], baseline: str) -> list[dict]:
    """Median, p90 and speed-up against the baseline variant (wall clock and CPU time), one row per variant."""
    def stats(samples: list[tuple[float, float]], column: int) -> tuple[float, float]:
        values = [s[column] for s in samples]
        return float(np.median(values)), float(np.percentile(values, 90))

    base_wall, base_cpu = stats(times[baseline], 0)[0], stats(times[baseline], 1)[0]
    out = []
    for scan, samples in times.items():
        (median, p90), (cpu_median, cpu_p90) = stats(samples, 0), stats(samples, 1)
        out.append({"model": label, "width": width, "params": params, "scan": scan, "median_s": median, "p90_s": p90,
                    "cpu_median_s": cpu_median, "cpu_p90_s": cpu_p90, "times_s": [s[0] for s in samples],
                    "cpu_times_s": [s[1] for s in samples], "speedup": base_wall / median, "cpu_speedup": base_cpu / cpu_median})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=("mamba", "serpent"), default=["mamba", "serpent"])
    parser.add_argument("--scans", nargs="+", choices=SCANS, default=list(SCANS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/ssm_scan.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    recipe = Recipe(1, args.batch_size, 1e-3, 0.01, 0.1, args.layers, args.params, "auto")
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(3, len(VOCAB), size=(args.batch_size, args.length)))
    targets = torch.from_numpy(rng.integers(0, N_CLASSES, size=args.batch_size))
    load_start = os.getloadavg()
    results = []
    mamba_width = None
    for kind in args.models:
        width = width_for(kind, args.params, args.layers, args.length, "auto")
        mamba_width = width if kind == "mamba" else mamba_width
        torch.manual_seed(0)
        reference = Classifier(kind, width, args.layers, args.length, "sequential")
        steps = {}
        for scan in args.scans:
            model = Classifier(kind, width, args.layers, args.length, scan)
            model.load_state_dict(reference.state_dict())
            optimizer = optimizer_for(model, recipe)
            steps[scan] = lambda model=model, optimizer=optimizer: training_step(model, optimizer, ids, targets)
        times = interleaved(steps, args.repeats, f"{kind} step")
        results += rows(kind, width, count_parameters(reference), times, args.scans[0])
    channels = 2 * (mamba_width or width_for("mamba", args.params, args.layers, args.length, "auto"))
    inputs, weight = scan_inputs(args.batch_size, args.length, channels, 16), torch.randn(args.batch_size, args.length, channels)
    scans = {scan: lambda scan=scan: scan_step(scan, inputs, weight) for scan in args.scans}
    results += rows("scan alone", channels, 0, interleaved(scans, args.repeats, "scan"), args.scans[0])
    load_end = os.getloadavg()
    write_json(args.out, {"settings": vars(args) | {"out": str(args.out)}, "torch": torch.__version__,
                          "machine": f"{platform.machine()} {os.cpu_count()} cores", "loadavg_start": load_start,
                          "loadavg_end": load_end, "results": results})
    print(f"load average start {load_start}, end {load_end}")
    print(f"| model | width | params | scan | median s | p90 s | speed-up vs {args.scans[0]} | CPU median s | CPU p90 s | "
          "CPU speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['width']} | {r['params']:,} | {r['scan']} | {r['median_s']:.3f} | {r['p90_s']:.3f} | "
              f"{r['speedup']:.1f}× | {r['cpu_median_s']:.3f} | {r['cpu_p90_s']:.3f} | {r['cpu_speedup']:.1f}× |")


if __name__ == "__main__":
    main()
