"""`safemotion serve`: checks that refuse an unsafe start, JSON-lines logging, and uvicorn.

The checks run before anything heavy is imported: a non-loopback address without API keys is refused (anyone on the
network could generate), as is a missing model directory. Then uvicorn runs the app, which loads the model once.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from safemotion.parent_watch import watch_parent
from safemotion.serve.settings import DEFAULT_MODEL, MODELS_DIR, ServerSettings
from safemotion.serve.store import Store

# Attributes every LogRecord has (and uvicorn's ANSI-coloured copy of its message); anything else was passed in
# `extra` and becomes a JSON field.
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName", "color_message"}


class JsonLines(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the record's extra fields, and any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        entry.update({key: value for key, value in vars(record).items() if key not in _RECORD_FIELDS})
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info") -> None:
    """Send every logger (uvicorn's included) to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def check_start(settings: ServerSettings) -> None:
    """Raise ValueError/FileNotFoundError when the server must not start: an unprotected public bind, no model (or
    a --body-model file that is not there)."""
    settings.validate()
    if not settings.is_loopback():
        store = Store(settings.database_url())
        try:
            has_keys = store.has_keys()
        finally:
            store.close()
        if not has_keys:
            raise ValueError(
                f"refusing to listen on {settings.host}: it is reachable from other machines and no API keys are "
                f"configured in {settings.database_url()}. Create one with `safemotion keys add --role artist "
                f"--name NAME` (same --db/--data-dir), or bind 127.0.0.1 for single-user mode")
    path = settings.model_path()
    if not (path / "config.json").is_file():
        hint = ("the default model has not been trained into this installation yet; "
                if settings.model == DEFAULT_MODEL else "")
        raise FileNotFoundError(f"model {settings.model!r} not found at {path}; {hint}pass --model with a model "
                                f"directory or the name of one in {MODELS_DIR}")
    if settings.body_model is not None and not Path(settings.body_model).expanduser().is_file():
        raise FileNotFoundError(f"--body-model {settings.body_model}: no such file; pass an SMPL-format .pkl or .npz "
                                "you own, or leave the flag out to serve no body mesh")


def run_server(settings: ServerSettings) -> int:
    """Check, then serve until interrupted; returns the exit status."""
    check_start(settings)
    configure_logging(settings.log_level)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no tqdm bars between the JSON lines
    import uvicorn

    from safemotion.serve.app import create_app

    if settings.engine == "ray":
        from safemotion.serve.ray_app import ray_engine_factory

        app = create_app(settings, ray_engine_factory(settings))
    else:
        app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            access_log=False, timeout_graceful_shutdown=10, lifespan="on")
    server = uvicorn.Server(config)
    if settings.parent_pid is not None:
        exit_with_parent(server, settings.parent_pid)
    server.run()
    return 0 if server.started else 1


def exit_with_parent(server: "uvicorn.Server", pid: int) -> None:
    """Ask `server` to shut down once process `pid` (the Blender that started it) has ended."""

    def shut_down() -> None:
        logging.getLogger("safemotion.serve").warning("parent process ended; shutting down", extra={"parent_pid": pid})
        server.should_exit = True

    watch_parent(pid, shut_down)
