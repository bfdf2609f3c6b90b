"""bench/ssm.py at a tiny size: causal LM models do not look ahead, runs give sane metrics, the report is written, the
command runs end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import ssm  # noqa: E402
from listops import Classifier  # noqa: E402


@pytest.mark.parametrize("kind", ["transformer", "mamba", "serpent"])
def test_causal_byte_models_do_not_look_ahead(kind):
    torch.manual_seed(0)
    model = Classifier(kind, 16, 1, 24, "auto", vocab_size=256, n_out=256, pad_id=None, causal=True).eval()
    ids = torch.randint(0, 256, (2, 24))
    changed = ids.clone()
    changed[:, 12:] = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        logits, logits_changed = model(ids), model(changed)
    assert logits.shape == (2, 24, 256)
    assert torch.allclose(logits[:, :12], logits_changed[:, :12], atol=1e-5)
    assert not torch.allclose(logits[:, 12:], logits_changed[:, 12:])


def test_tiny_runs_and_report(tmp_path):
    lm = replace(ssm.SCALES["smoke"]["lm"], steps=2, test_size=512)
    pf = replace(ssm.SCALES["smoke"]["pathfinder"], steps=2, train_size=8, test_size=4)
    results = [
        ssm.run("lm", "mamba", lm, ssm.task_data("lm", lm, 0), 0, "auto", "cpu"),
        ssm.run("pathfinder", "transformer", pf, ssm.task_data("pathfinder", pf, 0), 0, "auto", "cpu"),
    ]
    assert 7.0 < results[0]["metric"] < 9.5  # bits per byte of an almost untrained model: near uniform (8)
    assert results[1]["metric"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert [step for step, _ in results[0]["curve"]] == [1, 2]
    payload = {"scale": "smoke", "command": "test", "scan": "auto", "machine": "test", "torch": torch.__version__,
               "settings": {"lm": {"steps": 2}}, "majority": {"pathfinder": 0.5}, "summary": ssm.summarise(results),
               "results": results}
    ssm.write_report(tmp_path / "ssm", payload)
    report = (tmp_path / "ssm" / "report.md").read_text()
    assert "| lm | mamba |" in report and "bits/byte" in report and "| pathfinder | transformer |" in report
    assert json.loads((tmp_path / "ssm" / "report.json").read_text())["summary"][0]["seeds"] == 1
    assert (tmp_path / "ssm" / "plots" / "curves.png").stat().st_size > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["ssm"]  # no temporary folder left behind


def _bench_command(*args: str, out: Path) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(root / "bench" / "ssm.py"), *args, "--out", str(out)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)


def test_command_runs_every_task_and_model_at_smoke_size(tmp_path):
    done = _bench_command("--scale", "smoke", "--task", "all", "--seeds", "0", "--steps", "1", out=tmp_path / "ssm")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "ssm" / "report.json").read_text())
    assert {(r["task"], r["model"]) for r in report["summary"]} == {(t, m) for t in ssm.TASKS for m in ssm.MODELS}
    assert report["lm_corpus"] and set(report["majority"]) == {"listops", "pathfinder"}
    assert "| lm | serpent |" in (tmp_path / "ssm" / "report.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_gpu_scale_without_cuda_is_a_clear_error(tmp_path):
    done = _bench_command("--scale", "gpu", "--task", "listops", out=tmp_path / "ssm")
    assert done.returncode == 2 and "--scale gpu needs CUDA" in done.stderr
    assert not (tmp_path / "ssm").exists()
