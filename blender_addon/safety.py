"""The safe-content workflow in the file: every safety decision, kept in the scene's safety list and its report.

Decisions: a generation the policy acted on (sanitized, blocked or allowed; `record_generation`) and every audit
(`record_audit`). For each the add-on
- reports a warning with the server's reason;
- for a written take, puts timeline markers on the first and last scene frame of every span of hit tokens and stores
  the safety record as JSON in the custom property `safemotion_safety` of the take's actions;
- appends an entry to the scene's safety list (`scene.safemotion.flagged`: time, who, server, prompt, seed, model,
  policy, thresholds, hit ratio, spans, reason), which outlives the take and is what "Export Report" writes (CSV and
  JSON, mode 0644);
- for an audit of a generated take, compares the two measures and says in the entry's note why they agree or differ
  (the generation counts the model's own tokens against the generation limit; the audit re-encodes the finished
  motion against the audit limit, calibrated on real motion capture).
"""

from __future__ import annotations

import csv
import getpass
import io
import json
import os
import tempfile
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import bpy
from bpy_extras.io_utils import ExportHelper

SAFETY_PROPERTY = "safemotion_safety"  # custom property on flagged actions: the safety record as JSON
MARKER_PREFIX = "SafeMotion flag"
CSV_COLUMNS = ("time", "who", "server", "event", "prompt", "model", "seed", "policy", "action", "decision",
               "flagged", "hit_ratio", "threshold", "concept", "calibrated", "flagged_frames", "signals", "reason",
               "note")
SIGNAL_NAMES = {"code_hit": "code hit", "prompt": "prompt", "motion": "motion", "combined": "combined"}
REPORT_MODE = 0o644  # the report is for others to read (auditors), not a secret
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # spreadsheet apps run cells starting with these as formulas


def scene_frame_spans(spans: Iterable[Iterable[int]], motion_fps: float, scene_fps: float,
                      frame_start: float) -> list[tuple[float, float]]:
    """Scene frames (first, last) of motion frame spans [start, end): the motion's rate mapped onto the scene's."""
    ratio = scene_fps / motion_fps
    result = []
    for start, end in spans:
        if not 0 <= start < end:
            raise ValueError(f"safety span [{start}, {end}) is not a valid frame range")
        result.append((frame_start + start * ratio, frame_start + (end - 1) * ratio))
    return result


def spans_text(frame_spans: Iterable[tuple[float, float]]) -> str:
    """Scene frame spans as text, e.g. '13-20, 41-44'."""
    return ", ".join(f"{round(a)}-{round(b)}" for a, b in frame_spans)


def signals_text(record: dict | None) -> str:
    """The record's signals as one line, e.g. 'code hit 0.30 ≥ 0.21 (fired); prompt 0.02 < 0.74'."""
    parts = []
    for signal in (record or {}).get("signals", []):
        name = SIGNAL_NAMES.get(signal.get("name"), str(signal.get("name")))
        fired = bool(signal.get("fired"))
        parts.append(f"{name} {float(signal.get('score', 0.0)):.2f} {'≥' if fired else '<'} "
                     f"{float(signal.get('threshold', 0.0)):.2f}{' (fired)' if fired else ''}")
    return "; ".join(parts)


def fill_safety(target: bpy.types.PropertyGroup, record: dict | None) -> None:
    """Copy a server safety record (None: the model screens nothing) into a SafeMotionSafety property group."""
    target.screened = record is not None
    record = record or {}
    target.flagged = bool(record.get("flagged", False))
    target.hit_ratio = float(record.get("hit_ratio", 0.0))
    target.threshold = float(record.get("threshold", 0.0))
    target.calibrated = bool(record.get("calibrated", False))
    target.decision = str(record.get("decision", "unscreened" if not target.screened else ""))
    target.concept = str(record.get("concept", ""))
    target.reason = str(record.get("reason", "the model has no removed codes: nothing is screened"
                                   if not target.screened else ""))
    target.signals = signals_text(record)
    target.record_json = json.dumps(record, sort_keys=True) if target.screened else ""


def who_asked() -> str:
    """The user of this computer (for the record's 'who')."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database
        return "unknown"


def _add_entry(scene: bpy.types.Scene, label: str, event: str, record: dict, prompt: str, model: str, seed: int,
               policy: str, server: str, action_name: str, spans: str, note: str = "") -> bpy.types.PropertyGroup:
    """A new entry of the scene's safety list."""
    entry = scene.safemotion.flagged.add()
    entry.name = label
    entry.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    entry.event, entry.who, entry.server = event, who_asked(), server
    entry.prompt, entry.model, entry.seed, entry.policy = prompt, model, seed, policy
    entry.action_name, entry.spans, entry.note = action_name, spans, note
    fill_safety(entry.safety, record)
    return entry


def record_generation(scene: bpy.types.Scene, label: str, record: dict, actions: Iterable[bpy.types.Action],
                      motion_fps: float, frame_start: float, prompt: str, model: str, seed: int, policy: str,
                      server: str) -> str:
    """The safety list entry of a generation the policy acted on (sanitized, blocked or allowed), with markers and
    action properties for a written take (`actions` empty: blocked, nothing written); returns the warning."""
    actions = [action for action in actions if action is not None]
    if actions:
        render = scene.render
        frame_spans = scene_frame_spans(record.get("spans", []), motion_fps, render.fps / render.fps_base,
                                        frame_start)
        for first, last in frame_spans:
            scene.timeline_markers.new(f"{MARKER_PREFIX} {label}"[:63], frame=round(first))
            scene.timeline_markers.new(f"{MARKER_PREFIX} end {label}"[:63], frame=round(last))
        for action in actions:
            action[SAFETY_PROPERTY] = json.dumps(record, sort_keys=True)
        spans = spans_text(frame_spans)
    else:  # blocked: no scene frames, the motion's own frames say where
        spans = "motion frames " + ", ".join(f"{a}-{b - 1}" for a, b in record.get("spans", []))
    entry = _add_entry(scene, label, "generation", record, prompt, model, seed, policy, server,
                       actions[0].name if actions else "", spans)
    if not actions:
        return f"Take '{label}' was blocked: {record.get('reason', '')}"
    where = f" (frames {entry.spans})" if entry.spans else ""
    return f"Take '{label}' was {'flagged' if record.get('flagged') else record.get('decision', '')}{where}: " \
           f"{record.get('reason', '')}"


def _verdict(flagged: bool) -> str:
    return "flagged" if flagged else "passed"


def compare_text(generation: dict | None, audit: dict) -> str:
    """How an audit compares with the generation record of the same take, in an artist's words."""
    a_ratio, a_limit, a_flag = audit["hit_ratio"], audit["threshold"], bool(audit["flagged"])
    audit_part = (f"The audit re-reads the finished motion from its joint positions: {a_ratio:.0%} of its tokens "
                  f"use removed codes, audit limit {a_limit:.0%}, so it is {_verdict(a_flag)}.")
    if generation is None:
        return audit_part + " The take has no generation record (made by hand or imported) to compare with."
    g_ratio, g_limit = generation.get("hit_ratio", 0.0), generation.get("threshold", 0.0)
    decision, g_flag = generation.get("decision", ""), bool(generation.get("flagged"))
    measured = (f"At generation {g_ratio:.0%} of the model's own tokens used removed codes "
                f"(generation limit {g_limit:.0%})")
    if decision == "sanitized":
        gen_part = f"{measured}, so those codes were replaced: the take was sanitized."
    elif decision == "allowed":
        gen_part = f"{measured}: flagged, and allowed as generated (nothing was replaced)."
    else:
        gen_part = f"{measured}: {_verdict(g_flag)}."
    # What the file should hold: a sanitized or unflagged take no removed content, an allowed take all of it.
    clean_in_file = decision == "sanitized" or not g_flag
    if clean_in_file != a_flag:
        agree = ("the take was allowed as it is, and the audit finds it too" if decision == "allowed"
                 else f"both say the take is {'clean' if clean_in_file else 'flagged'}")
        return f"{gen_part} {audit_part} They agree: {agree}."
    if a_flag:
        why = ("They differ because the two checks read different things: the generation counts the tokens the "
               "model chose (and sanitizing replaced the removed ones), while the audit encodes the finished motion "
               "afresh, and movement that still resembles the removed content reads back as removed codes. The "
               "audit limit is set on real motion capture, the generation limit on generated motion. Look at the "
               "marked frames before using the take.")
    else:
        why = ("They differ because the audit encodes the finished motion afresh and finds fewer removed codes than "
               "the model's own tokens had; the audit limit is set on real motion capture, the generation limit on "
               "generated motion.")
    return f"{gen_part} {audit_part} {why}"


def record_audit(scene: bpy.types.Scene, label: str, report: dict, action: bpy.types.Action, frame_spans: str,
                 server: str, prompt: str = "") -> str:
    """The safety list entry of an audit of `action` (compared with the take's generation record when it has one);
    returns the text to report."""
    generation = json.loads(action[SAFETY_PROPERTY]) if SAFETY_PROPERTY in action else None
    note = compare_text(generation, report)
    record = {**{k: report[k] for k in ("hit_ratio", "threshold", "calibrated", "flagged", "concept")},
              "decision": "audited", "reason": f"audit {_verdict(report['flagged'])}: {report['hits']} of "
                                               f"{report['num_tokens']} tokens use removed codes"}
    entry = _add_entry(scene, label, "audit", record, prompt, report.get("model", ""), 0, "", server, action.name,
                       frame_spans, note)
    return f"Audit of {action.name!r}: {_verdict(report['flagged'])}; {entry.note}"


def _cell(value: object) -> object:
    """A CSV cell; text that a spreadsheet would run as a formula is prefixed with an apostrophe."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def report_rows(entries: Iterable[bpy.types.PropertyGroup]) -> list[dict[str, object]]:
    """One report row (CSV_COLUMNS) per safety-list entry."""
    rows = []
    for entry in entries:
        safety = entry.safety
        rows.append({"time": entry.created, "who": entry.who, "server": entry.server, "event": entry.event,
                     "prompt": entry.prompt, "model": entry.model, "seed": entry.seed, "policy": entry.policy,
                     "action": entry.action_name, "decision": safety.decision, "flagged": safety.flagged,
                     "hit_ratio": f"{safety.hit_ratio:.4f}", "threshold": f"{safety.threshold:.4f}",
                     "concept": safety.concept, "calibrated": safety.calibrated, "flagged_frames": entry.spans,
                     "signals": safety.signals, "reason": safety.reason, "note": entry.note})
    return rows


def _write_report_text(path: Path, text: str) -> None:
    """Write text atomically (temp file + rename) with mode REPORT_MODE."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, REPORT_MODE)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_csv_report(path: str | os.PathLike, rows: Iterable[dict[str, object]]) -> int:
    """Write rows (CSV_COLUMNS) as UTF-8 CSV, atomically, mode 0644; returns the number of rows."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow({key: _cell(row.get(key, "")) for key in CSV_COLUMNS})
        count += 1
    _write_report_text(Path(path), buffer.getvalue())
    return count


def write_json_report(path: str | os.PathLike, rows: list[dict[str, object]]) -> None:
    """Write rows as a JSON report ({"decisions": [...]}, ratios as numbers) atomically, mode 0644."""
    decisions = [{**row, "hit_ratio": float(row["hit_ratio"]), "threshold": float(row["threshold"])} for row in rows]
    _write_report_text(Path(path), json.dumps({"decisions": decisions}, indent=1, ensure_ascii=False) + "\n")


class SAFEMOTION_OT_export_safety_report(bpy.types.Operator, ExportHelper):
    """Write the safety decisions of this scene to a CSV file and a JSON file beside it"""

    bl_idname = "safemotion.export_safety_report"
    bl_label = "Export Report"

    filename_ext = ".csv"
    filter_glob: bpy.props.StringProperty(default="*.csv", options={"HIDDEN"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        path = Path(bpy.path.abspath(self.filepath))
        json_path = path.with_suffix(".json")
        if not path.parent.is_dir():
            self.report({"ERROR"}, f"Cannot write {path}: folder {path.parent} does not exist")
            return {"CANCELLED"}
        rows = report_rows(context.scene.safemotion.flagged)
        try:
            count = write_csv_report(path, rows)
            write_json_report(json_path, rows)
        except OSError as err:
            self.report({"ERROR"}, f"Cannot write {path}: {err.strerror or err}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Wrote {count} safety decision(s) to {path} and {json_path.name}")
        return {"FINISHED"}


CLASSES = (SAFEMOTION_OT_export_safety_report,)
