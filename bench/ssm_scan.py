"""Selective-scan implementations timed per training step of bench/listops.py's classifiers (interleaved, one process).

For each model (bidirectional Mamba, bidirectional SeRpEnt; ListOps recipe widths for --params) and each scan
(`sequential` PyTorch loop = the old default, `native` fused C kernel, `chunked` parallel scan), one training step =
forward + cross-entropy + backward + AdamW step on a random batch of ListOps token ids (batch × length, no padding).
The variants run interleaved (round-robin, after one warm-up step each) from identical weights, so machine load hits
them alike; prints medians, p90s and the speed-up of each variant over `sequential`, and the load average.

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

from listops import Classifier, Recipe, optimizer_for, width_for, write_json  # noqa: E402

from safemotion.data.listops import N_CLASSES, VOCAB  # noqa: E402

SCANS = ("sequential", "native", "chunked")


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ids: torch.Tensor, targets: torch.Tensor) -> float:
    """Seconds for one forward + backward + optimizer step."""
    start = time.perf_counter()
    loss = F.cross_entropy(model(ids), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


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
    for kind in args.models:
        width = width_for(kind, args.params, args.layers, args.length, "auto")
        torch.manual_seed(0)
        reference = Classifier(kind, width, args.layers, args.length, "sequential")
        runs = {}
        for scan in args.scans:
            model = Classifier(kind, width, args.layers, args.length, scan)
            model.load_state_dict(reference.state_dict())
            runs[scan] = (model, optimizer_for(model, recipe), [])
        for repeat in range(args.repeats + 1):  # repeat 0 = warm-up, not recorded
            for scan, (model, optimizer, times) in runs.items():
                seconds = training_step(model, optimizer, ids, targets)
                if repeat:
                    times.append(seconds)
                print(f"{kind} {scan} step {repeat}: {seconds:.3f} s", flush=True)
        baseline = float(np.median(runs[args.scans[0]][2]))
        for scan, (model, _, times) in runs.items():
            median = float(np.median(times))
            results.append({"model": kind, "width": width, "params": sum(p.numel() for p in model.parameters()),
                            "scan": scan, "median_s": median, "p90_s": float(np.percentile(times, 90)),
                            "times_s": times, f"speedup_vs_{args.scans[0]}": baseline / median})
    load_end = os.getloadavg()
    write_json(args.out, {"settings": vars(args) | {"out": str(args.out)}, "torch": torch.__version__,
                          "machine": f"{platform.machine()} {os.cpu_count()} cores", "loadavg_start": load_start,
                          "loadavg_end": load_end, "results": results})
    print(f"load average start {load_start}, end {load_end}")
    print(f"| model | width | params | scan | median s/step | p90 s/step | speed-up vs {args.scans[0]} |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['width']} | {r['params']:,} | {r['scan']} | {r['median_s']:.3f} | {r['p90_s']:.3f} | "
              f"{r[f'speedup_vs_{args.scans[0]}']:.1f}× |")


if __name__ == "__main__":
    main()
