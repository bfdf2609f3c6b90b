"""Unlearning benchmark (issue 4): wall time of LCR with and without cached code statistics, and of UCE/RECE, on a
given model directory and dataset (with `safemotion data split` files for the concept).

LCR "cold" encodes the split into an empty cache folder, "warm" reads that cache (the README's ~15 s of the paper
most likely assumes its cached codes CSV). Each run writes a full model directory (timed). UCE/RECE times exclude
loading the text encoder, which is timed on its own.

    .venv/bin/python bench/unlearn.py --model MODEL_DIR --data DATASET --threads 2 --write
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from safemotion.generate import pick_device
from safemotion.models.model_dir import load_model_dir
from safemotion.models.text_encoders import load_text_encoder
from safemotion.unlearn.cond_edit import CondEditOptions, CondEditSettings, run_cond_edit
from safemotion.unlearn.lcr_pipeline import LCROptions, run_lcr
from results_md import machine, publish

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Unlearning (issue 4)"


def bench(args: argparse.Namespace, work: Path) -> list[tuple[str, float, str]]:
    """(step, seconds, details) rows."""
    rows = []
    load_model_dir(args.model)  # warm-up: the first load pays one-off import and allocation costs
    fp32_removed: dict[int, dict[int, list[int]]] = {}  # crops per caption → fp32 run's removed codes
    for precision in args.precisions:
        for repeats in args.repeats:
            cache = work / f"cache-{precision}-{repeats}"
            for name in ("cold", "warm"):
                start = time.perf_counter()
                result = run_lcr(LCROptions(model=args.model, data=args.data,
                                            out=work / f"lcr-{precision}-{repeats}-{name}", concept=args.concept,
                                            rule=args.rule, k=args.k, repeats=repeats, cache_dir=cache,
                                            precision=precision, device=args.device, progress=False))
                seconds = time.perf_counter() - start
                parts = ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items())
                same = ""
                if precision == "fp32":
                    fp32_removed[repeats] = result.removed_codes
                elif repeats in fp32_removed:
                    same = ("; removed codes as fp32" if result.removed_codes == fp32_removed[repeats] else
                            f"; removed codes DIFFER from fp32: {result.removed_codes}")
                rows.append((f"LCR, {repeats} crops per caption, encoder {precision}, statistics "
                             f"{'encoded' if not result.cache_hit else 'from cache'}", seconds,
                             f"{parts}; {result.n_forget} forget / {result.n_retain} retain samples, "
                             f"{sum(map(len, result.removed_codes.values()))} codes removed{same}"))
                print(rows[-1], flush=True)
    if args.skip_cond:
        return rows
    device = pick_device(args.device)
    start = time.perf_counter()
    encoder = load_text_encoder(load_model_dir(args.model).config.text_encoder, device, args.clip_weights,
                                args.clip_vocab)
    rows.append(("text encoder load (not part of UCE/RECE)", time.perf_counter() - start, encoder.name))
    for method in ("uce", "rece"):
        start = time.perf_counter()
        run_cond_edit(CondEditOptions(model=args.model, out=work / method, method=method, concept=args.concept,
                                      settings=CondEditSettings(), device=args.device), encoder=encoder)
        rows.append((method.upper(), time.perf_counter() - start, "encode the words, closed form, write the model"))
        print(rows[-1], flush=True)
    return rows


def report(args: argparse.Namespace, rows: list[tuple[str, float, str]], before: str, after: str) -> str:
    """The markdown section."""
    lines = [SECTION, "",
             f"`bench/unlearn.py`: model `{args.model}`, dataset `{args.data}`, concept `{args.concept}` "
             f"(rule `{args.rule}`), k = {args.k}, crops per caption {' and '.join(map(str, args.repeats))} "
             f"(the paper: 20), VQ encoder {' and '.join(args.precisions)}, device {args.device}.", "",
             f"- Machine at start: {before}", f"- Machine at end: {after}", "",
             "| step | wall time (s) | details |", "|---|---|---|"]
    lines += [f"| {step} | {seconds:.2f} | {details} |" for step, seconds, details in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="original model directory")
    parser.add_argument("--data", type=Path, required=True, help="dataset with kw_splits for the concept")
    parser.add_argument("--concept", default="violence")
    parser.add_argument("--rule", default="word_boundary")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--repeats", type=int, nargs="+", default=[20], help="crops per caption line, one LCR each")
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32"],
                        help="VQ encoder precisions for the statistics, one set of LCR runs each")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-cond", action="store_true", help="time LCR only (no text encoder needed)")
    parser.add_argument("--clip-weights", type=Path)
    parser.add_argument("--clip-vocab", type=Path)
    parser.add_argument("--write", action="store_true", help=f"write the section into {RESULTS}")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    before = machine()
    with tempfile.TemporaryDirectory(prefix="bench-unlearn-") as work:
        rows = bench(args, Path(work))
    text = report(args, rows, before, machine())
    publish(SECTION, text, write=args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
