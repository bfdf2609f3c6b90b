"""Edit benchmark (issue 18): time of an edit against a full generation of the same length, on the shipped mini model.

Each operation runs from the prompt (text encoding included) to joint positions, without the SMPL fit, one variation,
alternating with its generation so both see the same load:

- regenerate the middle 2 s (frames 40:80) of a 6 s walk        vs  generating 6 s
- extend the 6 s walk by 2 s                                    vs  generating 8 s
- in-between of the 6 s walk and a 3 s wave, 1.5 s transition   vs  generating 9.8 s (the model's longest: the
  in-between's 10.4 s exceed it; it decodes a window of 23 tokens, 8 of each take and the 7 new ones)

Reported: median and p90 wall time over the runs, the edit/generation ratio of the medians, and the share of the
CPUs other processes used meanwhile (the machine may be shared).

    .venv/bin/python bench/edit.py --repeats 15 --write

`--decode` times instead what an edit's VQ decode costs: the rows of one call (its variations, or one round of seam
tries) decoded together, as the editor does, against one row at a time, as it did before, with the largest
difference between the two (section "Edit decoding").
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from generate import timed
from results_md import machine, publish
from safemotion.edit import Editor, source_from_features
from safemotion.generate import DEFAULT_MODEL_DIR, GenerationRequest
from safemotion.safe_generation import SafeGenerator

SECTION = "## Edits (issue 18)"
DECODE_SECTION = "## Edit decoding (issue 18)"


def run(repeats: int) -> list[dict]:
    """Timings of each edit and its generation, alternated run by run."""
    safe = SafeGenerator.from_dir(DEFAULT_MODEL_DIR)
    editor = Editor(safe)
    walk, wave = (safe.generator.generate([GenerationRequest(prompt, seconds, seed=1)], smpl=False)[0]
                  for prompt, seconds in (("a person walks forward", 6.0), ("a person waves", 3.0)))
    walk, wave = (source_from_features(m.features, m.fps) for m in (walk, wave))
    seeds = iter(range(10**6))
    cases = [
        ("regenerate 2 s of a 6 s walk", 6.0,
         lambda: editor.edit(walk, [(40, 80)], "a person jumps", seed=next(seeds), smpl=False)),
        ("extend a 6 s walk by 2 s", 8.0,
         lambda: editor.extend(walk, 2.0, "then sits down", seed=next(seeds), smpl=False)),
        ("in-between 6 s walk, 1.5 s, 3 s wave", 9.8,
         lambda: editor.inbetween(walk, wave, 1.5, "a person walks and stops", seed=next(seeds), smpl=False)),
    ]
    rows = []
    for name, seconds, edit in cases:
        def generation():
            return safe.generator.generate([GenerationRequest("a person jumps", seconds, next(seeds))], smpl=False)

        edit(), generation()  # warm-up
        edits, generations, others = [], [], []
        for _ in range(repeats):
            for fn, out in ((edit, edits), (generation, generations)):
                wall, busy = timed(fn)
                out.append(wall)
                others.append(busy)
        rows.append({"case": name, "seconds": seconds, "edit": edits, "generation": generations,
                     "others": float(np.median(others))})
        print(f"{name}: edit {np.median(edits):.3f} s, generation {np.median(generations):.3f} s", file=sys.stderr)
    return rows


def table(rows: list[dict], repeats: int, threads: int) -> str:
    """The RESULTS.md section."""
    lines = [SECTION, "",
             f"`bench/edit.py --repeats {repeats}` on `safemotion-mini` (CPU, {threads} torch thread(s)); {machine()}.",
             "Wall time from the prompt to joint positions (text encoding included, no SMPL fit), one variation; each "
             "edit alternates with a generation of its result's length. The machine was shared with other "
             "engineers' jobs: the last column is the median share of the CPUs they used during a run, so the "
             "absolute times are noisy; the ratio, from runs taken side by side, is the number to read.", "",
             "| operation | edit median / p90 (s) | generation of the same length: median / p90 (s) | edit / generation "
             "| others' CPU share |",
             "|---|---|---|---|---|"]
    for row in rows:
        e, g = np.array(row["edit"]), np.array(row["generation"])
        lines.append(f"| {row['case']} (vs {row['seconds']:g} s) | {np.median(e):.3f} / {np.percentile(e, 90):.3f} | "
                     f"{np.median(g):.3f} / {np.percentile(g, 90):.3f} | {np.median(e) / np.median(g):.2f} | "
                     f"{row['others']:.0%} |")
    lines += ["", "An edit runs the same masked-decoding steps over its whole token window (the kept tokens are "
              "context, not skipped work) and adds the VQ encoding of the source, the placement and cross-fade of the "
              "seams and the features of the result: it costs about what generating its length costs. An extension's "
              "or in-between's window is only its new tokens and 8 kept tokens on each side (18 and 23 tokens here), "
              "so these cost less than generating their whole length. A seam whose velocity jump exceeds "
              "EditSettings.seam_limit is decoded again at its boundary token (up to 8 seeded tries): the jump edits "
              "that need it take two to several times as long, hence the regenerate row's p90."]
    return "\n".join(lines) + "\n"


def decode(repeats: int, threads: int) -> str:
    """The decode section: the window rows of 3- and 8-variation jump edits decoded together vs one by one."""
    safe = SafeGenerator.from_dir(DEFAULT_MODEL_DIR)
    generator = safe.generator
    walk = generator.generate([GenerationRequest("a person walks forward", 6.0, seed=1)], smpl=False)[0]
    walk = source_from_features(walk.features, walk.fps)
    lines = [DECODE_SECTION, "",
             f"`bench/edit.py --decode --repeats {repeats}` on `safemotion-mini` (CPU, {threads} torch thread(s)); "
             f"{machine()}. The VQ decode of an edit's rows (the 30-token window of frames 40:80 of a 6 s walk "
             "regenerated): all rows of a call in one batch, as the editor decodes them, against one row at a time, "
             "alternated run by run. Medians of wall time; Δ is the largest difference of a decoded feature "
             "between the two (not bitwise: oneDNN's convolutions block a batch differently from one row).", "",
             "| rows | together: median (s) | one by one: median (s) | one by one / together | max Δ of a feature | "
             "others' CPU share |", "|---|---|---|---|---|---|"]
    for variations in (3, 8):
        rows = [item.motion.tokens for item in Editor(safe).edit(walk, [(40, 80)], "a person jumps", seed=0,
                                                                variations=variations, smpl=False)]
        together, alone, others = [], [], []
        for _ in range(repeats):
            for fn, out in ((lambda: generator.decode_tokens(rows), together),
                            (lambda: [generator.decode_tokens([row]) for row in rows], alone)):
                wall, busy = timed(fn)
                out.append(wall)
                others.append(busy)
        delta = max(float(np.abs(a - generator.decode_tokens([row])[0]).max())
                    for row, a in zip(rows, generator.decode_tokens(rows)))
        lines.append(f"| {variations} | {np.median(together):.4f} | {np.median(alone):.4f} | "
                     f"{np.median(alone) / np.median(together):.2f} | {delta:.1e} | {np.median(others):.0%} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="replace the section in bench/RESULTS.md")
    parser.add_argument("--decode", action="store_true", help="time the VQ decode of an edit's rows instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.decode:
        publish(DECODE_SECTION, decode(args.repeats, args.threads), write=args.write)
        return 0
    text = table(run(args.repeats), args.repeats, args.threads)
    publish(SECTION, text, write=args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
