"""Screening overhead per request (issue 16): what the prompt screen, the motion judge and the combined decision add to
one generation request on the CPU, against the generation itself in the same run.

The request is one prompt, one variation, with the length the model's estimator picks (prompts from the safe and
violent sets in turn). SafeGenerator encodes each prompt once and hands the same text features to the screen and the
generator, so the screen's own cost is its MLP; the MiniLM encoding is timed too, for reference (it is part of every
generation, screened or not). The motion judge runs on the generated joints. Each part is timed `--repeats` times
(median, p90); the ratio is the screening total (screen MLP + judge + decision) over the median generation.

    .venv/bin/python bench/screening.py --threads 2 --write
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from safemotion.generate import GenerationRequest, Generator
from safemotion.unlearn.prompt_sets import load_prompt_set
from safemotion.unlearn.screening import load_screens
from results_md import machine, publish

MODEL = Path(__file__).resolve().parents[1] / "backend/safemotion/assets/models/safemotion-mini-lcr"
SECTION = "## Screening overhead (issue 16)"


def timed(fn, repeats: int) -> list[float]:
    """Wall-clock seconds of each of `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def stats_ms(times: list[float]) -> tuple[float, float]:
    """(median, p90) in milliseconds."""
    ms = np.array(times) * 1000
    return float(np.median(ms)), float(np.percentile(ms, 90))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--generations", type=int, default=20, help="generations timed for the baseline")
    parser.add_argument("--write", action="store_true", help=f"replace the '{SECTION}' section of bench/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = Generator.from_dir(MODEL)
    screens = load_screens(MODEL, generator.models.config)
    if screens is None:
        raise SystemExit(f"{MODEL} is not screened")
    prompts = [p for name in ("safe", "implicit_violent") for p in load_prompt_set(name, "test")[:10]]
    features = generator.encode_prompts(prompts)
    motions = [generator.generate([GenerationRequest(p, seed=k)], smpl=False)[0] for k, p in enumerate(prompts)]
    generation = timed(lambda: generator.generate([GenerationRequest(prompts[0], seed=1)], smpl=False),
                       args.generations)
    cycle = iter(range(10**9))

    def pick() -> int:
        return next(cycle) % len(prompts)

    encode = timed(lambda: generator.encode_prompts([prompts[pick()]]), args.repeats)
    screen = timed(lambda: screens.prompt_scores_of_features(features[pick():][:1]), args.repeats)
    judge = timed(lambda: screens.motion.score(motions[pick()].joints), args.repeats)
    decide = timed(lambda: screens.decide(0.1, screens.settings.threshold, 0.2, 0.3), args.repeats)
    total = [a + b + c for a, b, c in zip(screen, judge, decide)]
    rows = [("prompt screen (MLP on the text features)", screen), ("motion judge (window features + MLP)", judge),
            ("combined decision", decide), ("**screening total**", total),
            ("MiniLM encoding of the prompt (reference; shared with generation)", encode),
            ("generation of the motion (baseline)", generation)]
    frames = [len(m.joints) for m in motions]
    base = statistics.median(generation)
    lines = [SECTION, "",
             f"`bench/screening.py --threads {args.threads}`: model `safemotion-mini-lcr` (screened), one prompt and "
             f"one variation per request, lengths from the estimator ({min(frames)}-{max(frames)} frames, median "
             f"{int(np.median(frames))}), {args.repeats} repeats per part ({args.generations} generations). "
             f"Machine: {machine()}. The 2-core CPU is shared with other jobs, so the numbers are noisy.", "",
             "| part | median ms | p90 ms |", "|---|---|---|"]
    for name, times in rows:
        median, p90 = stats_ms(times)
        lines.append(f"| {name} | {median:.2f} | {p90:.2f} |")
    lines += ["", f"Screening adds {stats_ms(total)[0]:.2f} ms (median; p90 {stats_ms(total)[1]:.2f} ms) per request, "
              f"{statistics.median(total) / base:.2%} of the median generation ({base * 1000:.0f} ms); target ≤ 15 ms."]
    text = "\n".join(lines) + "\n"
    publish(SECTION, text, write=args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
