"""Backbone benchmark (issue 8): base-layer generation speed of the masked transformer with each backbone.

Mini-size models (train.presets.mini) with random weights; only `mask_transformer.backbone` changes. Text features
are random vectors. The base layer is decoded with the generation code (`decoding.decode_base`): 10 steps, guidance 4
(conditional and unconditional in one doubled batch), top-k 0.9, 196 frames (49 tokens). The residual layers and the
VQ decoder do not depend on the backbone (see the "Generation (issue 3)" section for their cost).

Timed per backbone:
- batch 1: median of `--repeats` 10-step decodes after one warm-up;
- batch 32: one 10-step decode (backbones listed in `--batch32-backbones`);
- batch 32, first step alone: one guided forward with every token masked (the most expensive step for SeRpEnt,
  whose [MASK] tokens each own a slot in every resampling branch).

    .venv/bin/python bench/backbones.py --threads 1 --write
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

from safemotion.decoding import SamplingConfig, decode_base
from safemotion.models.config import BACKBONES
from safemotion.models.mask_transformer import MaskTransformer
from safemotion.models.model_dir import parameter_count
from safemotion.train.presets import mini
from results_md import machine, publish

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Backbones (issue 8)"
TOKENS = 49
BATCH = 32
SAMPLING = SamplingConfig(time_steps=10, cond_scale=4.0, topk_filter_thres=0.9)


def mini_mask_transformer(backbone: str) -> MaskTransformer:
    """Randomly initialised mini-size masked transformer with the given backbone, in eval mode."""
    torch.manual_seed(0)
    return MaskTransformer(dataclasses.replace(mini().mask_transformer, backbone=backbone)).eval()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def decode_seconds(model: MaskTransformer, features: torch.Tensor, seed: int) -> float:
    """Wall time of one 10-step base-layer decode of len(features) motions of 49 tokens."""
    batch = features.shape[0]
    generators = [torch.Generator().manual_seed(seed + i) for i in range(batch)]
    lengths = torch.full((batch,), TOKENS)
    return timed(lambda: decode_base(model, features, lengths, generators, SAMPLING))


@torch.inference_mode()
def first_step_seconds(model: MaskTransformer, features: torch.Tensor) -> float:
    """Wall time of one guided forward with every token masked."""
    ids = torch.full((features.shape[0], TOKENS), model.mask_id)
    padding = torch.zeros_like(ids, dtype=torch.bool)
    return timed(lambda: model.forward_with_cond_scale(ids, features, padding, cond_scale=SAMPLING.cond_scale))


def bench_backbone(backbone: str, repeats: int, full_batch: bool) -> dict:
    """Timings and parameter count for one backbone."""
    model = mini_mask_transformer(backbone)
    features = torch.randn(BATCH, model.config.text_dim, generator=torch.Generator().manual_seed(1))
    decode_seconds(model, features[:1], 0)  # warm-up
    single = [decode_seconds(model, features[:1], seed) for seed in range(1, repeats + 1)]
    return {
        "backbone": backbone,
        "params": parameter_count(model),
        "b1": statistics.median(single),
        "b1_runs": single,
        "b32": decode_seconds(model, features, 100) if full_batch else None,
        "b32_first_step": first_step_seconds(model, features),
    }


def report(results: list[dict], repeats: int, before: str, after: str) -> str:
    """The markdown section."""
    base = next((r for r in results if r["backbone"] == "transformer"), None)
    lines = [
        SECTION, "",
        "`bench/backbones.py`: mini-size masked transformer (width 256, 6 layers, MLP 1024, MiniLM features) with "
        "random weights; base-layer decoding only (`decoding.decode_base`): 10 steps, CFG 4 in one doubled batch, "
        "top-k 0.9, 196 frames (49 tokens). Mamba = pre-norm blocks of a bidirectional Mamba (d_state 16, expand 2, "
        "sequential scan on CPU) + MLP; SeRpEnt = the same with a bidirectional SeRpEnt mixer (κ = 0.5/0.3/0.2, "
        "K = 3, each branch a bidirectional Mamba); [MASK] tokens and the condition token are kept (own a slot) in "
        "every branch.", "",
        f"- Machine at start: {before}", f"- Machine at end: {after}", "",
        "| backbone | mask-transformer parameters | batch 1: s per motion (median) | batch 32: s per batch "
        "| batch 32: motions/s | batch 32: first step alone (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        b32 = "not run" if r["b32"] is None else f"{r['b32']:.2f}"
        rate = "–" if r["b32"] is None else f"{BATCH / r['b32']:.2f}"
        lines.append(f"| {r['backbone']} | {r['params'] / 1e6:.2f} M | {r['b1']:.3f} | {b32} | {rate} "
                     f"| {r['b32_first_step']:.2f} |")
    lines += ["", f"Batch 1 = median of {repeats} decodes after a warm-up; batch 32 = one decode."]
    skipped = [r["backbone"] for r in results if r["b32"] is None]
    if skipped:
        lines.append(f"Batch-32 decode not run for {', '.join(skipped)} (to keep the run short on a shared machine); "
                     "rerun with `--batch32-backbones` to time it.")
    if base is not None:
        ratios = ", ".join(f"{r['backbone']} {r['b1'] / base['b1']:.1f}×" for r in results if r is not base)
        lines.append(f"Batch-1 time relative to the transformer: {ratios}.")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument("--batch32-backbones", nargs="*", default=list(BACKBONES), choices=BACKBONES,
                        help="backbones whose full batch-32 decode is timed (SeRpEnt takes minutes on one CPU thread)")
    parser.add_argument("--repeats", type=int, default=3, help="batch-1 decodes for the median")
    parser.add_argument("--write", action="store_true", help=f"append the section to {RESULTS}")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    before = machine()
    results = []
    for backbone in args.backbones:
        results.append(bench_backbone(backbone, args.repeats, backbone in args.batch32_backbones))
        print(results[-1], flush=True)
    text = report(results, args.repeats, before, machine())
    publish(SECTION, text, write=args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
