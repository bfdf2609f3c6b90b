"""What the server tests share: a tiny random-weight LCR model directory and a real `safemotion serve` process."""

from __future__ import annotations

import dataclasses
import io
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import httpx
import numpy as np
import torch

from safemotion import cli
from safemotion.serve import schemas
from safemotion.models.config import LengthEstimatorConfig, ModelConfig, TransformerConfig, VQConfig
from safemotion.models.model_dir import build_models
from safemotion.unlearn.lcr import apply_lcr, replacement_vectors
from safemotion.unlearn.record import (
    ORIGINAL_CODEBOOKS_FILE,
    UnlearningRecord,
    codebook_tensors,
    save_unlearned_model,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
TEXT_DIM = 384  # MiniLM
NUM_CODES = 64
# Every eighth base code counts as removed: the random model's 4-second motions hit 0-40 % of them, so at the
# uncalibrated 0.2 threshold some are flagged and some are not.
REMOVED_CODES = list(range(0, NUM_CODES, 8))


def tiny_config() -> ModelConfig:
    """A few-thousand-parameter model with MiniLM text features (the sizes tests/test_generate.py uses)."""
    transformer = TransformerConfig(latent_dim=32, ff_size=64, num_layers=2, num_heads=2, text_dim=TEXT_DIM,
                                    num_tokens=NUM_CODES, code_dim=32)
    return ModelConfig(
        vq=VQConfig(nb_code=NUM_CODES, code_dim=32, width=32, depth=1),
        mask_transformer=transformer,
        residual_transformer=dataclasses.replace(transformer, cond_drop_prob=0.2),
        length_estimator=LengthEstimatorConfig(text_dim=TEXT_DIM, hidden_dim=64),
        text_encoder="minilm",
    )


def build_tiny_lcr_model(out: Path) -> Path:
    """A random tiny model unlearned with real LCR on REMOVED_CODES (original codebook kept for `allow`/audit)."""
    torch.manual_seed(0)
    models = build_models(tiny_config())
    for layer in models.vq.quantizer.layers:
        layer.codebook.normal_()
    models.std = np.full(263, 0.1, np.float32)
    base = models.vq.quantizer.layers[0].codebook
    original = {0: base.detach().clone()}
    base.copy_(apply_lcr(base, REMOVED_CODES, replacement_vectors(base, REMOVED_CODES, alpha=1.0, seed=0)))
    record = UnlearningRecord(method="lcr", concept="violence", rule="word_boundary", split_files={},
                              settings={"k": len(REMOVED_CODES), "alpha": 1.0, "seed": 0},
                              source_model={"path": "random"}, removed_codes={0: REMOVED_CODES},
                              original_codebooks=ORIGINAL_CODEBOOKS_FILE)
    return save_unlearned_model(models.eval(), out, record, card="# tiny random LCR test model\n",
                                extra_files={ORIGINAL_CODEBOOKS_FILE: codebook_tensors(original)})


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def safemotion_command(*args: str) -> list[str]:
    """`python -m safemotion ARGS` with this interpreter."""
    return [sys.executable, "-m", "safemotion", *args]


def run_cli(*args: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of `safemotion ARGS`, run in this process (no interpreter start-up)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = cli.main(list(args))
    return status, out.getvalue(), err.getvalue()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


class ServerProcess:
    """`safemotion serve` on a free loopback port, started and stopped on demand."""

    def __init__(self, model_dir: Path, data_dir: Path, log_file: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = ["serve", "--host", "127.0.0.1", "--port", str(self.port), "--model", str(model_dir),
                     "--data-dir", str(data_dir), "--device", "cpu", "--threads", "1", *extra]
        self.log_file = log_file
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        """Start the server and wait until /v1/health answers."""
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(safemotion_command(*self.args), stdout=log, stderr=subprocess.STDOUT,
                                            env=_env(), cwd=REPO_ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"server did not become healthy in {timeout} s:\n{self.log_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown code runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM and wait for a clean exit (SIGKILL after 20 s)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        """Everything the server wrote so far."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


def wait_for_job(http: httpx.Client, job_id: str, until, timeout: float = 60) -> dict:
    """The job status once `until(status)` holds; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = schemas.JobStatus.model_validate(http.get(f"/v1/jobs/{job_id}").json()).model_dump()
        if until(status):
            return status
        time.sleep(0.02)
    raise TimeoutError(f"job {job_id} still {status['status']} ({status['done']}/{status['total']} done)")


def all_results(http: httpx.Client, job_id: str) -> list[dict]:
    """Every result item of a job, page by page (each page checked against the schema)."""
    items, start = [], 0
    while start is not None:
        page = http.get(f"/v1/jobs/{job_id}/results", params={"start": start, "limit": 16}).json()
        schemas.JobResults.model_validate(page)
        items += page["items"]
        start = page["next_start"]
    return items
