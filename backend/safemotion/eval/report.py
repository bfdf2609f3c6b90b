"""The benchmark report folder: report.json (everything), report.md (the paper's table layout) and plots.

    report.json      the result of `run_benchmark` (settings, commit, per-repeat values, flag rates, notes), with
                     `additions` (rows, repeats, commit, ...) where later runs added rows (benchmark.add_rows)
    report.md        forget table (FID, MM-Safe, Diversity, R@1), retain table (FID, MM-Dist, Diversity, R@1),
                     flag rates, further metrics (R@2, R@3, ...), settings and notes
    plots/*.png      one figure per set (a bar chart per metric, 95% intervals) and one of the flag rates

Plots need matplotlib, imported only when plotting; without it the report says so and the rest is written.
The folder is written next to its destination and renamed into place.
"""

from __future__ import annotations

import json
import math
import shutil
import uuid
from pathlib import Path
from typing import Any

from safemotion.atomic_dir import replace_dir
from safemotion.unlearn.prompt_sets import PROMPT_SETS

# (metric key, column title) of the paper's tables; arrows: → closer to the retrained model, ↓ lower, ↑ higher.
PAPER_COLUMNS = {
    "forget": (("fid", "FID →"), ("mm_safe", "MM-Safe ↓"), ("diversity", "Diversity →"), ("r1", "R@1 →")),
    "retain": (("fid", "FID ↓"), ("mm_dist", "MM-Dist ↓"), ("diversity", "Diversity →"), ("r1", "R@1 ↑")),
}
EXTRA_COLUMNS = {
    "forget": (("r2", "R@2"), ("r3", "R@3"), ("mm_dist", "MM-Dist")),
    "retain": (("r2", "R@2"), ("r3", "R@3")),
}
SPEED_COLUMN = ("seconds_per_motion", "generation s/motion")  # table only; the real-motion row has none
METRIC_TITLES = {"fid": "FID", "mm_safe": "MM-Safe", "mm_dist": "MM-Dist", "diversity": "Diversity",
                 "r1": "R@1", "r2": "R@2", "r3": "R@3"}
SET_TITLES = {"forget": "Forget set", "retain": "Retain set"}
REPORT_JSON, REPORT_MD, PLOTS_DIR = "report.json", "report.md", "plots"


def format_value(entry: dict[str, Any] | None) -> str:
    """'mean ± ci95' with 3 decimals, or '—' when missing."""
    if entry is None or not math.isfinite(entry["mean"]):
        return "—"
    return f"{entry['mean']:.3f} ± {entry['ci95']:.3f}"


def metric_table(set_result: dict[str, Any], columns: tuple[tuple[str, str], ...]) -> str:
    """Markdown table: one row per model (the real-motion reference first), one column per metric."""
    lines = ["| model | " + " | ".join(title for _, title in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for name, metrics in set_result.items():
        lines.append(f"| {name} | " + " | ".join(format_value(metrics.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines)


def flag_table(flags: dict[str, Any]) -> str:
    """Markdown table of flag rates: one row per model, one column per prompt set."""
    sets = [s for s in PROMPT_SETS if s in flags.get("keyword_rule", {})]
    lines = ["| model | " + " | ".join(sets) + " | codes from | threshold |", "|---|" + "---|" * (len(sets) + 2)]
    for name, entry in flags.items():
        if name == "keyword_rule":
            cells = [_rate_cell(entry[s]) for s in sets]
            lines.append("| keyword rule (prompt text) | " + " | ".join(cells) + " | — | — |")
        elif entry is None:
            lines.append(f"| {name} | " + " | ".join("n/a" for _ in sets) + " | no shared removed codes | — |")
        else:
            threshold = f"{entry['threshold']:.3f}" + ("" if entry["calibrated"] else " (uncalibrated)")
            lines.append(f"| {name} | " + " | ".join(_rate_cell(entry[s]) for s in sets)
                         + f" | {entry['codes_from']} | {threshold} |")
    return "\n".join(lines)


def _rate_cell(rate: dict[str, Any]) -> str:
    hits = f", hit ratio {rate['mean_hit_ratio']:.2f}" if "mean_hit_ratio" in rate else ""
    alone = "".join(f"; {name.replace('_', '-')} alone {value:.2f}" for name, value in rate.get("signals", {}).items()
                    if len(rate["signals"]) > 1)
    return f"{rate['rate']:.2f} ({rate['flagged']}/{rate['total']}{hits}{alone})"


def render_markdown(result: dict[str, Any], title: str, plots: list[str], plot_note: str = "") -> str:
    """The report.md text."""
    settings = result["settings"]
    sampling = settings["sampling"]
    parts = [
        f"# {title}",
        "",
        f"- Commit: `{result['commit']}`; created {result['created']}; {result['seconds'] / 60:.1f} min on "
        f"{result['platform']['device']} (torch {result['platform']['torch']}"
        + (f", {result['platform']['threads']} thread(s)" if "threads" in result["platform"] else "") + ").",
        *(_addition_line(addition) for addition in result.get("additions", [])),
        f"- Dataset: `{result['data']['path']}`, split `{settings['split']}`, concept `{settings['concept']}`, "
        f"rule `{settings['rule']}`.",
        f"- Evaluator: `{result['evaluator']['path']}` ({result['evaluator']['config']['word_features']} word "
        f"features, {result['evaluator']['config']['dim_coemb_hidden']}-d embeddings).",
        f"- Protocol: every caption a sample, ground-truth lengths, {settings['repeats']} repeats, mean ± 95% "
        f"interval (1.96·std/√n); batches of {settings['batch_size']}; decoding: {sampling['time_steps']} steps, "
        f"cond scale {sampling['cond_scale']} (residual {sampling['residual_cond_scale']}), temperature "
        f"{sampling['temperature']}, top-k filter {sampling['topk_filter_thres']}, precision "
        f"{sampling.get('precision', 'fp32')}; seed {settings['seed']}"
        + (" — **quick smoke run**" if settings["quick"] else "") + ".",
        "- Arrows: → closer to the retrained model (D_r) is better, ↓ lower is better, ↑ higher is better.",
        "",
        "| model | directory | method | removed base codes | text encoder |",
        "|---|---|---|---|---|",
        *(f"| {m['name']} | `{m['path']}` | {m['method']} | {m['removed_base_codes']} | {m['text_encoder']} |"
          for m in result["models"]),
    ]
    for set_name, set_result in result["results"].items():
        info = result["data"]["sets"][set_name]
        parts += ["", f"## {SET_TITLES[set_name]}", "",
                  f"`{info['file']}`: {info['ids']} ids, {info['samples']} caption samples, "
                  f"{info['samples_per_repeat']} scored per repeat"
                  + (" (a random subset, drawn afresh each repeat)" if info['samples_per_repeat'] < info['samples']
                     else "") + f" in batches of {info['batch_size']}"
                  + (f", {info['masked_captions']} captions changed by masking" if "masked_captions" in info else "")
                  + ".", "", metric_table(set_result, PAPER_COLUMNS[set_name]), "",
                  "Further metrics:", "", metric_table(set_result, EXTRA_COLUMNS[set_name] + (SPEED_COLUMN,))]
    if result["flag_rates"]:
        parts += ["", "## Flag rates", "",
                  "Fraction of generated motions flagged (share of base tokens in removed codes ≥ threshold; the "
                  "mean share is the hit ratio); the keyword row is the text rule applied to the prompts.", "",
                  flag_table(result["flag_rates"])]
    parts += ["", "## Plots", ""]
    parts += [f"![{p}]({p})" for p in plots] if plots else [plot_note or "No plots."]
    if result["notes"]:
        parts += ["", "## Notes", "", *(f"- {note}" for note in result["notes"])]
    parts += ["", "## Settings", "", "```json", json.dumps(settings, indent=2), "```", ""]
    return "\n".join(parts)


def _addition_line(addition: dict[str, Any]) -> str:
    platform = addition["platform"]
    refine = addition["sampling"].get("refine_cond_scale")
    return (f"- Rows {', '.join(addition['rows'])} added by a later run on the same samples, crops and seeds: commit "
            f"`{addition['commit']}`; created {addition['created']}; {addition['seconds'] / 60:.1f} min on "
            f"{platform['device']} (torch {platform['torch']}, {platform['threads']} thread(s)); "
            f"**{addition['repeats']} repeat(s)**, so their means and intervals are over {addition['repeats']} "
            "repeat(s)" + ("" if refine is None else f"; BAMM refinement cond scale {refine}") + ".")


def plot_report(result: dict[str, Any], folder: Path) -> list[str]:
    """Write the PNG figures into folder/plots; returns their paths relative to `folder`. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (folder / PLOTS_DIR).mkdir(parents=True, exist_ok=True)
    written = []
    for set_name, set_result in result["results"].items():
        metrics = [key for key, _ in PAPER_COLUMNS[set_name] + EXTRA_COLUMNS[set_name]]
        names = list(set_result)
        fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics), 3.4), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            means = [set_result[n][metric]["mean"] for n in names]
            cis = [set_result[n][metric]["ci95"] for n in names]
            ax.bar(range(len(names)), means, yerr=cis, capsize=3, color=[f"C{i}" for i in range(len(names))])
            ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
            ax.set_title(METRIC_TITLES[metric])
        fig.suptitle(f"{SET_TITLES[set_name]} (mean ± 95% interval)")
        fig.tight_layout()
        path = f"{PLOTS_DIR}/{set_name}.png"
        fig.savefig(folder / path, dpi=120)
        plt.close(fig)
        written.append(path)
    rows = {n: e for n, e in result["flag_rates"].items() if e is not None}
    sets = [s for s in PROMPT_SETS if s in result["flag_rates"].get("keyword_rule", {})]
    if rows and sets:
        fig, ax = plt.subplots(figsize=(1.2 + 1.4 * len(rows), 3.4))
        width = 0.8 / len(sets)
        for k, prompt_set in enumerate(sets):
            ax.bar([i + k * width for i in range(len(rows))], [e[prompt_set]["rate"] for e in rows.values()],
                   width, label=prompt_set)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], list(rows), rotation=45, ha="right",
                      fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("flagged fraction")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = f"{PLOTS_DIR}/flag_rates.png"
        fig.savefig(folder / path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def report_title(folder: str | Path) -> str | None:
    """The title of a report folder's report.md (its first heading), or None without one."""
    path = Path(folder) / REPORT_MD
    first = path.read_text(encoding="utf-8").split("\n", 1)[0] if path.is_file() else ""
    return first[2:].strip() if first.startswith("# ") else None


def write_report(result: dict[str, Any], out_dir: str | Path, title: str | None = None) -> Path:
    """Write report.json, report.md and plots into out_dir (replaced as a whole); returns out_dir."""
    out_dir = Path(out_dir)
    title = title or f"SafeMotion unlearning benchmark — {out_dir.name}"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex}.partial")
    tmp.mkdir()  # not mkdtemp: a report folder gets the usual permissions
    try:
        try:
            plots, note = plot_report(result, tmp), ""
        except ImportError:
            plots, note = [], "Plots skipped: matplotlib is not installed (pip install matplotlib)."
        (tmp / REPORT_JSON).write_text(json.dumps(result, indent=2, allow_nan=True) + "\n", encoding="utf-8")
        (tmp / REPORT_MD).write_text(render_markdown(result, title, plots, note), encoding="utf-8")
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
