"""`make demo`: a prompt → the bundled SafeMotion server → Blender retargets it onto a skinned rig → out/demo/.

Blender runs headless as the bpy module of this environment, in its own process (`safemotion.demo_blender`) with the
add-on enabled as an extension and a scratch Blender user folder. The add-on starts the bundled server
(`python -m safemotion serve`, the server's default model or --model), generates the prompt onto a Mixamo-named demo
rig with a skinned body, saves the scene and renders a Workbench preview; this process turns the frames into a GIF
and writes the report.

Outputs in --out: demo.blend, frames/frame_NNNN.png, preview.gif, report.json. They are written into a scratch
folder beside --out and renamed into place at the end, so --out is either the previous complete demo or the new
one. The server is stopped when the take is written; on any failure the whole Blender process group (the server
included) is terminated.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from safemotion.atomic_dir import replace_dir
from safemotion.serve.settings import DEFAULT_MODEL, ServerSettings

PROMPT = "a person walks forward and waves"
GIF_FILE = "preview.gif"
REPORT_FILE = "report.json"
BLENDER_LOG_TAIL = 40  # lines of the Blender process's output shown when it fails
STOP_WAIT_S = 10.0


@dataclass(frozen=True)
class DemoOptions:
    """What the demo generates and renders."""

    prompt: str = PROMPT
    seed: int = 7
    seconds: float = 6.0
    model: Path | None = None  # None: the server's default model
    width: int = 640
    height: int = 360
    every: int = 4  # render every n-th frame
    timeout_s: float = 900.0  # the whole Blender process (server start, generation, render)


def model_dir(model: Path | None) -> Path:
    """The model folder the server will load; FileNotFoundError saying what to do when it is not there."""
    path = Path(model) if model is not None else ServerSettings().model_path()
    if not (path / "config.json").is_file():
        what = f"the default model {DEFAULT_MODEL!r}" if model is None else "the model"
        raise FileNotFoundError(f"{what} is not at {path} (no config.json). Train it (README: Command line) or "
                                "pass --model with a model folder")
    return path.resolve()


def run_demo(out: Path, options: DemoOptions = DemoOptions()) -> dict:
    """Run the demo into `out` (replaced as a whole at the end) and return the report."""
    model = model_dir(options.model)
    if importlib.util.find_spec("bpy") is None:
        raise ModuleNotFoundError(f"{sys.executable} cannot import bpy (Blender as a Python module); install "
                                  "bpy==5.0.1 into this environment (`make install` does)")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"  # mkdir, unlike mkdtemp, honours the umask
    staging.mkdir()
    work = Path(tempfile.mkdtemp(prefix="safemotion-demo-"))
    try:
        request = {"prompt": options.prompt, "seed": options.seed, "seconds": options.seconds,
                   "python": sys.executable, "out_dir": str(staging),
                   "model": str(model) if options.model is not None else None,
                   "width": options.width, "height": options.height, "every": options.every,
                   "extension_repo": str(work / "extensions")}
        started = time.monotonic()
        scene = run_blender(request, work, options.timeout_s)
        frames = [staging / "frames" / name for name in scene["render"]["frames"]]
        frame_ms = round(1000 * options.every / scene["fps"])
        write_gif(frames, staging / GIF_FILE, frame_ms)
        report = {**scene, "model": {**scene["model"], "path": str(model)},
                  "gif": {"file": GIF_FILE, "frames": len(frames), "frame_ms": frame_ms},
                  "timings_s": {**scene["timings_s"], "total": time.monotonic() - started},
                  "outputs": sorted(["demo.blend", "frames/", GIF_FILE, REPORT_FILE])}
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2))
        replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def run_blender(request: dict, work: Path, timeout_s: float) -> dict:
    """Run `safemotion.demo_blender` on the request in its own process group; its result, or RuntimeError."""
    request_path, result_path, log_path = work / "request.json", work / "result.json", work / "blender.log"
    request_path.write_text(json.dumps(request))
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(work / "blender_user"), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "safemotion.demo_blender", str(request_path), str(result_path)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True)
        try:
            status = process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            status = None
        finally:
            _stop_group(process)
    if status != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-BLENDER_LOG_TAIL:])
        why = f"did not finish in {timeout_s:g} s" if status is None else f"failed (exit status {status})"
        raise RuntimeError(f"the demo's Blender process {why}; the end of its output:\n{tail}")
    return json.loads(result_path.read_text())


def _stop_group(process: subprocess.Popen) -> None:
    """Terminate what is left of the process's group (Blender, the bundled server), killing after STOP_WAIT_S."""
    group = process.pid  # start_new_session: the group id is the leader's pid, kept while any member lives
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline:
            if process.poll() is not None and not _group_alive(group):
                break
            time.sleep(0.1)
    process.wait()


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def write_gif(frames: list[Path], path: Path, frame_ms: int) -> None:
    """An endlessly looping GIF of the PNG frames, `frame_ms` milliseconds each."""
    if not frames:
        raise ValueError(f"write_gif {path}: no frames to write")
    images = [Image.open(frame).convert("RGB").quantize(colors=255, dither=Image.Dither.NONE) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=frame_ms, loop=0, optimize=False)


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 640x360") from None
    return width, height


def main(argv: list[str] | None = None) -> int:
    """Command-line entry of `make demo`."""
    defaults = DemoOptions()
    parser = argparse.ArgumentParser(prog="python -m safemotion.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (replaced as a whole)")
    parser.add_argument("--model", type=Path, help=f"model folder (default: the server's {DEFAULT_MODEL})")
    parser.add_argument("--prompt", default=defaults.prompt)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--seconds", type=float, default=defaults.seconds)
    parser.add_argument("--every", type=int, default=defaults.every, help="render every n-th frame")
    parser.add_argument("--size", type=_size, default=(defaults.width, defaults.height), help="e.g. 640x360")
    parser.add_argument("--timeout", type=float, default=defaults.timeout_s, help="seconds for the Blender part")
    args = parser.parse_args(argv)
    options = dataclasses.replace(defaults, prompt=args.prompt, seed=args.seed, seconds=args.seconds,
                                  model=args.model, every=args.every, width=args.size[0], height=args.size[1],
                                  timeout_s=args.timeout)
    print(f"SafeMotion demo: '{options.prompt}' (seed {options.seed}, {options.seconds:g} s) → {args.out}/",
          flush=True)
    try:
        report = run_demo(args.out, options)
    except (FileNotFoundError, ModuleNotFoundError, RuntimeError, ValueError) as err:
        print(f"safemotion demo: error: {err}", file=sys.stderr)
        return 1
    errors = report["bone_direction_error_deg"]
    print(f"model {report['model']['name']}: {report['frames']} frames, safety {report['safety']['decision']}; "
          f"retarget bone-direction error mean {errors['mean']:.2g}°, max {errors['max']:.2g}°; "
          f"{len(report['render']['frames'])} PNGs, {GIF_FILE}, demo.blend, {REPORT_FILE} "
          f"in {report['timings_s']['total']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
