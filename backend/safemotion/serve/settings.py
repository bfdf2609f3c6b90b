"""Server settings: one dataclass that `safemotion serve` fills from its flags, plus where models and data live."""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import safemotion
from safemotion.decoding import PRECISION_NAMES

MODELS_DIR = Path(safemotion.__file__).resolve().parent / "assets" / "models"
DEFAULT_MODEL = "safemotion-mini-lcr"
DEFAULT_PORT = 8765
DATA_DIR_ENV = "SAFEMOTION_DATA_DIR"
DB_FILE = "safemotion.db"


@dataclass
class ServerSettings:
    """Everything `safemotion serve` can be told; the defaults are the bundled single-user set-up."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    model: str = DEFAULT_MODEL  # a name under MODELS_DIR or a model directory path
    device: str = "auto"
    db_url: str | None = None  # any SQLAlchemy URL; None = SQLite in data_dir
    data_dir: Path | None = None  # None = the platform's user data folder
    max_batch: int = 16  # motions per model batch; 1 serves one request at a time
    batch_window_ms: float = 10.0  # how long the worker waits for more requests to fill a batch
    max_queue: int = 64  # waiting interactive requests before 429
    request_timeout_s: float = 120.0  # deadline of every interactive request
    max_body_bytes: int = 2 * 1024 * 1024
    forbid_allow: bool = False  # refuse the `allow` policy even for safety admins
    threads: int | None = None  # torch intra-op threads of the model worker (None: torch's default)
    precision: str = "fp32"  # of the token transformers; bf16 is faster where the hardware has it, int8 on CPUs
    body_model: Path | None = None  # an SMPL-format .pkl/.npz the user owns, served at GET /v1/body-model
    log_level: str = "info"
    max_queued_motions: int = 8192  # per key: motions waiting in its jobs (two full 256 x 16 jobs)
    claim_lease_s: float = 30.0  # a job item claimed by a server that stopped renewing it is claimed again after this
    max_attempts: int = 3  # claims of one job item before it fails
    parent_pid: int | None = None  # exit when this process ends (the Blender that started a bundled server)
    engine: str = "local"  # local (this process) or ray (Ray Serve replicas)
    replicas: int = 1  # --engine ray: model replicas
    ray_address: str | None = None  # --engine ray: a running Ray cluster (None: start one on this machine)

    def validate(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        checks = [
            (1 <= self.port <= 65535, f"--port {self.port}: must be 1-65535"),
            (1 <= self.max_batch <= 256, f"--max-batch {self.max_batch}: must be 1-256"),
            (0 <= self.batch_window_ms <= 1000, f"--batch-window-ms {self.batch_window_ms}: must be 0-1000"),
            (1 <= self.max_queue <= 100_000, f"--max-queue {self.max_queue}: must be 1-100000"),
            (0 < self.request_timeout_s <= 3600, f"--request-timeout {self.request_timeout_s}: must be in (0, 3600]"),
            (1024 <= self.max_body_bytes <= 1 << 30, f"--max-body-bytes {self.max_body_bytes}: must be 1 KiB-1 GiB"),
            (self.threads is None or self.threads >= 1, f"--threads {self.threads}: must be at least 1"),
            (self.precision in PRECISION_NAMES,
             f"--precision {self.precision!r}: choose {', '.join(PRECISION_NAMES[:-1])} or {PRECISION_NAMES[-1]}"),
            (self.log_level in ("debug", "info", "warning", "error"),
             f"--log-level {self.log_level!r}: choose debug, info, warning or error"),
            (1 <= self.max_queued_motions <= 10_000_000,
             f"--max-queued-motions {self.max_queued_motions}: must be 1-10000000"),
            (1 <= self.claim_lease_s <= 3600, f"--claim-lease {self.claim_lease_s}: must be 1-3600 seconds"),
            (1 <= self.max_attempts <= 100, f"--max-attempts {self.max_attempts}: must be 1-100"),
            (self.parent_pid is None or self.parent_pid > 0, f"--parent-pid {self.parent_pid}: must be positive"),
            (self.engine in ("local", "ray"), f"--engine {self.engine!r}: choose local or ray"),
            (1 <= self.replicas <= 1024, f"--replicas {self.replicas}: must be 1-1024"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def model_path(self) -> Path:
        """The model directory: `model` itself when it names a path, else MODELS_DIR / model."""
        candidate = Path(self.model).expanduser()
        if candidate.is_dir() or os.sep in self.model or "/" in self.model:
            return candidate
        return MODELS_DIR / self.model

    def database_url(self) -> str:
        """`db_url`, or a SQLite file in the data folder."""
        if self.db_url:
            return self.db_url
        return f"sqlite:///{self.resolved_data_dir() / DB_FILE}"

    def resolved_data_dir(self) -> Path:
        """`data_dir`, else $SAFEMOTION_DATA_DIR, else the platform's per-user data folder."""
        if self.data_dir is not None:
            return Path(self.data_dir).expanduser()
        return default_data_dir()

    def is_loopback(self) -> bool:
        """Whether `host` only accepts connections from this machine."""
        return is_loopback(self.host)


def default_data_dir() -> Path:
    """$SAFEMOTION_DATA_DIR or the per-user data folder (XDG on Linux, Application Support, %LOCALAPPDATA%)."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "safemotion"
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", home / "AppData" / "Local")) / "safemotion"
    return Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share") / "safemotion"


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback addresses (127.0.0.0/8, ::1); hostnames are treated as reachable."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
