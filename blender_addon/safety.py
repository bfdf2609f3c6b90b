"""The safe-content workflow in the file: what a flagged take leaves behind, and the CSV report of flagged takes.

For every flagged motion (the server's safety record says `flagged`) the add-on
- shows a warning with the server's reason (the operator reports the text `flag_take` returns);
- puts timeline markers on the first and last scene frame of every span of hit tokens;
- stores the safety record as JSON in the custom property `safemotion_safety` of the take's actions;
- appends an entry to the scene's flagged list (`scene.safemotion.flagged`), which outlives the take and is what
  "Export CSV Report" writes.
"""

from __future__ import annotations

import csv
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
CSV_COLUMNS = ("time", "prompt", "model", "seed", "action", "decision", "hit_ratio", "threshold", "concept",
               "calibrated", "flagged_frames", "signals", "reason")
SIGNAL_NAMES = {"code_hit": "code hit", "prompt": "prompt", "motion": "motion", "combined": "combined"}
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


def flag_take(scene: bpy.types.Scene, label: str, record: dict, actions: Iterable[bpy.types.Action],
              motion_fps: float, frame_start: float, prompt: str, model: str, seed: int) -> str:
    """Markers, action properties and a flagged-list entry for a flagged take; returns the warning to report."""
    render = scene.render
    frame_spans = scene_frame_spans(record.get("spans", []), motion_fps, render.fps / render.fps_base, frame_start)
    for first, last in frame_spans:
        scene.timeline_markers.new(f"{MARKER_PREFIX} {label}"[:63], frame=round(first))
        scene.timeline_markers.new(f"{MARKER_PREFIX} end {label}"[:63], frame=round(last))
    actions = [action for action in actions if action is not None]
    for action in actions:
        action[SAFETY_PROPERTY] = json.dumps(record, sort_keys=True)
    entry = scene.safemotion.flagged.add()
    entry.name = label
    entry.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    entry.prompt = prompt
    entry.model = model
    entry.seed = seed
    entry.action_name = actions[0].name if actions else ""
    entry.spans = spans_text(frame_spans)
    fill_safety(entry.safety, record)
    where = f" (frames {entry.spans})" if entry.spans else ""
    return f"Take '{label}' was flagged{where}: {record.get('reason', '')}"


def _cell(value: object) -> object:
    """A CSV cell; text that a spreadsheet would run as a formula is prefixed with an apostrophe."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def report_rows(flagged: Iterable[bpy.types.PropertyGroup]) -> list[dict[str, object]]:
    """One CSV row (CSV_COLUMNS) per flagged-list entry."""
    rows = []
    for entry in flagged:
        safety = entry.safety
        rows.append({"time": entry.created, "prompt": entry.prompt, "model": entry.model, "seed": entry.seed,
                     "action": entry.action_name, "decision": safety.decision,
                     "hit_ratio": f"{safety.hit_ratio:.4f}", "threshold": f"{safety.threshold:.4f}",
                     "concept": safety.concept, "calibrated": safety.calibrated,
                     "flagged_frames": entry.spans, "signals": safety.signals, "reason": safety.reason})
    return rows


def write_csv_report(path: str | os.PathLike, rows: Iterable[dict[str, object]]) -> int:
    """Write rows (CSV_COLUMNS) as UTF-8 CSV, atomically (temp file + rename); returns the number of rows."""
    path = Path(path)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow({key: _cell(row.get(key, "")) for key in CSV_COLUMNS})
        count += 1
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(buffer.getvalue())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return count


class SAFEMOTION_OT_export_safety_report(bpy.types.Operator, ExportHelper):
    """Write the flagged generations of this scene to a CSV file"""

    bl_idname = "safemotion.export_safety_report"
    bl_label = "Export CSV Report"

    filename_ext = ".csv"
    filter_glob: bpy.props.StringProperty(default="*.csv", options={"HIDDEN"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        path = Path(bpy.path.abspath(self.filepath))
        if not path.parent.is_dir():
            self.report({"ERROR"}, f"Cannot write {path}: folder {path.parent} does not exist")
            return {"CANCELLED"}
        try:
            count = write_csv_report(path, report_rows(context.scene.safemotion.flagged))
        except OSError as err:
            self.report({"ERROR"}, f"Cannot write {path}: {err.strerror or err}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Wrote {count} flagged generation(s) to {path}")
        return {"FINISHED"}


CLASSES = (SAFEMOTION_OT_export_safety_report,)
