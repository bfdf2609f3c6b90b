"""The bundled server: `<python> -m safemotion serve` on a free loopback port, started and stopped by the add-on.

Pure subprocess + requests (no bpy), so it is tested without Blender. The server runs in the user's own Python
environment (the one with torch and the `safemotion` package); Blender's Python never imports torch. It listens on
127.0.0.1 only (single-user mode: no API key), writes its database and log into `data_dir`, and is stopped when the
add-on is disabled or Blender exits (`stop_server` is registered with atexit by the add-on).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from .client import SETTINGS_HINT, BackendError

HOST = "127.0.0.1"
LOG_FILE = "server.log"
CHECK_TIMEOUT_S = 60.0  # importing safemotion in a cold environment can take a while
STOP_TIMEOUT_S = 10.0
_CHECK_CODE = "import safemotion, sys; sys.stdout.write(safemotion.__version__)"


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def resolve_python(python: str) -> str:
    """The interpreter's full path; a blank, missing or non-executable path raises BackendError."""
    if not python.strip():
        raise BackendError("No Python interpreter is set for the bundled SafeMotion server. Set the Python of the "
                           f"environment where the backend is installed (e.g. .venv/bin/python) in {SETTINGS_HINT}.")
    path = Path(python).expanduser()
    found = str(path) if path.is_file() else shutil.which(python)
    if found is None or not os.access(found, os.X_OK):
        raise BackendError(f"Python interpreter {python!r} for the bundled SafeMotion server was not found or is not "
                           f"executable. Fix the path in {SETTINGS_HINT}.")
    return found


def check_interpreter(python: str, timeout: float = CHECK_TIMEOUT_S) -> str:
    """The safemotion version `python` can import; BackendError saying how to fix it when it cannot."""
    path = resolve_python(python)
    try:
        done = subprocess.run([path, "-c", _CHECK_CODE], capture_output=True, text=True, timeout=timeout,
                              env=_server_env())
    except subprocess.TimeoutExpired:
        raise BackendError(f"Python {path} took more than {timeout:g} s to import safemotion; "
                           "check that environment") from None
    except OSError as err:
        raise BackendError(f"Python {path} could not be run ({err.strerror}). Fix the path in {SETTINGS_HINT}."
                           ) from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no error output"])[-1]
        raise BackendError(f"Python {path} cannot import the SafeMotion backend ({last}). Install it into that "
                           "environment (`pip install -e backend` from the SafeMotion sources, or the safemotion "
                           f"wheel), or choose the Python of the environment that has it in {SETTINGS_HINT}.")
    return done.stdout.strip()


def _server_env() -> dict[str, str]:
    """The server's environment: Blender's own Python settings removed so the other interpreter starts cleanly."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHONNOUSERSITE")}
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass(frozen=True)
class ServerConfig:
    """How the bundled server is started: interpreter, model (None: the server's default) and data folder."""

    python: str
    data_dir: Path
    model: str | None = None
    threads: int | None = None  # torch threads of the model worker (None: torch's default)


class BundledServer:
    """One `safemotion serve` child process on a free loopback port."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = Path(config.data_dir) / LOG_FILE
        self.process: subprocess.Popen | None = None

    def command(self, python: str) -> list[str]:
        """The command line that starts the server."""
        args = [python, "-m", "safemotion", "serve", "--host", HOST, "--port", str(self.port),
                "--data-dir", str(self.config.data_dir), "--parent-pid", str(os.getpid())]
        if self.config.model:
            args += ["--model", self.config.model]
        if self.config.threads:
            args += ["--threads", str(self.config.threads)]
        return args

    def start(self) -> None:
        """Check the interpreter, then start the process (returns at once; see `poll_ready` / `wait_ready`)."""
        if self.process is not None:
            raise RuntimeError("BundledServer.start: this server was already started")
        python = resolve_python(self.config.python)
        check_interpreter(python)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(python), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=_server_env())

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self.process is not None and self.process.poll() is None

    def poll_ready(self) -> bool:
        """Whether /v1/health answers now; BackendError when the process has exited (with the log's reason)."""
        if self.process is None:
            raise BackendError("The bundled SafeMotion server was not started")
        if self.process.poll() is not None:
            raise BackendError(f"The bundled SafeMotion server stopped while starting (exit status "
                               f"{self.process.returncode}): {self.failure_reason()} — full log: {self.log_path}")
        try:
            return requests.get(f"{self.url}/v1/health", timeout=1.0).status_code == 200
        except requests.RequestException:
            return False

    def wait_ready(self, timeout: float, cancelled: threading.Event | None = None) -> None:
        """Block until /v1/health answers; BackendError on exit, once `cancelled` is set, or after `timeout` seconds
        (the server is then stopped)."""
        deadline = time.monotonic() + timeout
        while not self.poll_ready():
            if cancelled is not None and cancelled.is_set():
                raise BackendError("Cancelled while the bundled SafeMotion server was starting")
            if time.monotonic() > deadline:
                self.stop()
                raise BackendError(f"The bundled SafeMotion server did not become ready within {timeout:g} s "
                                   f"(loading the model can be slow on CPU); see {self.log_path}")
            time.sleep(0.2)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Terminate the process and wait for it (killed after `timeout` seconds)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def failure_reason(self) -> str:
        """The server's own error line from its log (`safemotion: error: ...`), else the log's last line."""
        try:
            lines = [line.strip() for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return "no log was written"
        errors = [line for line in lines if line.startswith("safemotion: error:")]
        return (errors or lines or ["the log is empty"])[-1]


# ---------------------------------------------------------------------------------------------- the add-on's server

_server: BundledServer | None = None
# Starting and stopping are serialised: a generation starts the server from its request thread, and a start that
# waited for a stop (add-on disabled) sees its generation cancelled and starts nothing.
_lock = threading.Lock()


def current() -> BundledServer | None:
    """The bundled server this Blender session started (running or not), or None."""
    return _server


def ensure_started(config: ServerConfig, cancelled: threading.Event | None = None) -> BundledServer:
    """The running server for `config`, started now when there is none or its settings changed (no waiting);
    BackendError instead of a start once `cancelled` is set."""
    global _server
    with _lock:
        if cancelled is not None and cancelled.is_set():
            raise BackendError("Cancelled before the bundled SafeMotion server was started")
        if _server is not None and _server.running and _server.config == config:
            return _server
        _stop_locked()
        server = BundledServer(config)
        server.start()
        _server = server
        return server


def stop_server() -> None:
    """Stop the bundled server, if one is running (called on unregister and at exit)."""
    with _lock:
        _stop_locked()


def _stop_locked() -> None:
    global _server
    if _server is not None:
        _server.stop()
        _server = None
