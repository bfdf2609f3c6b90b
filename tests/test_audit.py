"""Motion audit: a BVH written from synthetic joints is imported, encoded with the ORIGINAL codebook of a tiny LCR
model and reported (hits, spans, per-second timeline, JSON schema, text), also from .npz files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from safemotion import cli
from safemotion.data.bvh import bvh_from_smpl_joints, write_bvh
from safemotion.models.model_dir import save_model_dir
from safemotion.motion import skeleton
from safemotion.motion.features import extract_features
from safemotion.unlearn.audit import audit_file, encode_joints, load_joints, resample_joints
from safemotion.unlearn.record import (
    ORIGINAL_CODEBOOKS_FILE,
    UnlearningRecord,
    codebook_tensors,
    save_unlearned_model,
)
from tiny_unlearn_model import tiny_models

SOURCE_FPS = 30


def walking_joints(frames: int = 150) -> np.ndarray:
    """Rest pose moving forward while the left arm swings about the shoulder (rigidly, bone lengths kept)."""
    rest = skeleton.rest_joints()
    out = np.repeat(rest[None], frames, axis=0).astype(np.float64)
    shoulder, chain = 16, [18, 20]  # left shoulder, elbow, wrist
    for t in range(frames):
        angle = 1.2 * math.sin(2 * math.pi * t / 45)
        rotation = np.array([[1, 0, 0], [0, math.cos(angle), -math.sin(angle)], [0, math.sin(angle), math.cos(angle)]])
        out[t, chain] = (rest[chain] - rest[shoulder]) @ rotation.T + rest[shoulder]
        out[t] += np.array([0.0, 0.0, 0.02 * t])
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(bvh file, LCR model dir, base codes of the motion under the original codebook, removed codes)."""
    root = tmp_path_factory.mktemp("audit")
    bvh = root / "walk.bvh"
    write_bvh(bvh_from_smpl_joints(walking_joints(), fps=SOURCE_FPS), bvh)
    models = tiny_models()
    joints, _ = load_joints(bvh)
    # codes = the motion's own encoder outputs at its first 16 tokens, so its tokens use varied codes
    features = torch.from_numpy(extract_features(joints.astype(np.float64))[:96].astype(np.float32))
    with torch.no_grad():
        latents = models.vq.encoder(features.T[None])[0].T
    models.vq.quantizer.layers[0].codebook.copy_(latents[:16])
    base = encode_joints(models, joints)[:, 0]
    assert len(set(base.tolist())) >= 6
    removed = sorted(set(base[4:6].tolist()))
    original = models.vq.quantizer.layers[0].codebook.clone()
    models.vq.quantizer.layers[0].codebook[removed] += 100.0  # the edited rows attract nothing any more
    record = UnlearningRecord(method="lcr", concept="violence", rule="word_boundary", split_files={}, settings={},
                              source_model={}, removed_codes={0: removed},
                              original_codebooks=ORIGINAL_CODEBOOKS_FILE)
    model = save_unlearned_model(models, root / "lcr", record, "# card\n",
                                 extra_files={ORIGINAL_CODEBOOKS_FILE: codebook_tensors({0: original})})
    assert not set(encode_joints(models, joints)[:, 0].tolist()) & set(removed)
    return bvh, model, base, removed


def test_audit_of_a_bvh_uses_the_original_codebook(setup):
    bvh, model, base, removed = setup
    report = audit_file(bvh, model)
    expected = [t for t, code in enumerate(base) if code in removed]
    assert report.hit_tokens == expected and report.hits == len(expected) and 4 in expected and 5 in expected
    assert report.num_tokens == len(base) and report.frames == 4 * len(base)
    assert report.hit_ratio == pytest.approx(len(expected) / len(base))
    assert report.flagged == (report.hit_ratio >= 0.2) and report.threshold == 0.2 and not report.calibrated
    assert report.source_fps == SOURCE_FPS and report.fps == 20.0
    for span in report.spans:
        assert span.start_frame % 4 == 0 and span.end_frame % 4 == 0
        assert span.start_s == pytest.approx(span.start_frame / 20) and span.end_s == pytest.approx(span.end_frame / 20)
    assert sum(s.end_frame - s.start_frame for s in report.spans) == 4 * len(expected)
    # per-second timeline: 5 tokens start in each full second
    assert len(report.timeline) == math.ceil(report.frames / 20)
    for second, ratio in enumerate(report.timeline):
        tokens = [t for t in range(len(base)) if second * 5 <= t < second * 5 + 5]
        assert ratio == pytest.approx(sum(t in expected for t in tokens) / len(tokens))
    assert report.layer_ratios == {"0": pytest.approx(report.hit_ratio)}


def test_audit_cli_json_schema_and_text(setup, capsys):
    bvh, model, _, _ = setup
    assert cli.main(["audit", str(bvh), "--model", str(model), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"file", "model", "concept", "fps", "source_fps", "unit_length", "frames", "seconds",
                         "num_tokens", "hits", "hit_ratio", "threshold", "calibrated", "flagged", "hit_tokens",
                         "spans", "timeline", "layer_ratios", "signals", "motion_timeline", "reason"}
    # an unscreened model: the code-hit signal alone, no motion-judge timeline
    assert [s["name"] for s in data["signals"]] == ["code_hit"] and data["motion_timeline"] is None
    assert data["signals"][0]["fired"] == data["flagged"] and data["reason"]
    assert set(data["spans"][0]) == {"start_frame", "end_frame", "start_s", "end_s"}
    assert data["concept"] == "violence" and isinstance(data["timeline"], list)
    assert cli.main(["audit", str(bvh), "--model", str(model)]) == 0
    text = capsys.readouterr().out
    assert f"removed-code hits: {data['hits']}/{data['num_tokens']} tokens" in text and "timeline" in text


def test_audit_of_npz_files_at_any_frame_rate(setup, tmp_path):
    bvh, model, _, _ = setup
    joints, _ = load_joints(bvh)
    reference = audit_file(bvh, model)
    np.savez(tmp_path / "m20.npz", joints=joints, fps=np.float32(20))
    np.savez(tmp_path / "m40.npz", joints=resample_joints(joints.astype(np.float64), 20, 40).astype(np.float32),
             fps=np.float32(40))
    for name, fps in (("m20.npz", 20), ("m40.npz", 40)):
        report = audit_file(tmp_path / name, model)
        assert report.hit_tokens == reference.hit_tokens and report.source_fps == fps


def test_audit_bad_inputs(setup, tmp_path, capsys):
    _, model, _, _ = setup
    np.savez(tmp_path / "none.npz", positions=np.zeros((10, 22, 3)))
    with pytest.raises(ValueError, match="no 'joints' array"):
        audit_file(tmp_path / "none.npz", model)
    np.savez(tmp_path / "short.npz", joints=np.repeat(skeleton.rest_joints()[None], 4, axis=0))
    with pytest.raises(ValueError, match="too short"):
        audit_file(tmp_path / "short.npz", model)
    assert cli.main(["audit", str(tmp_path / "clip.mp4"), "--model", str(model)]) == 2
    assert "unsupported motion file type '.mp4'" in capsys.readouterr().err
    plain = save_model_dir(tiny_models(), tmp_path / "plain")
    assert cli.main(["audit", str(tmp_path / "none.npz"), "--model", str(plain)]) == 2
    assert "no 'joints' array" in capsys.readouterr().err  # the file is checked before the model is loaded
    moving = skeleton.rest_joints()[None] + 0.01 * np.arange(40)[:, None, None]
    np.savez(tmp_path / "moving.npz", joints=moving, fps=20.0)
    assert cli.main(["audit", str(tmp_path / "moving.npz"), "--model", str(plain)]) == 2
    assert "no removed codes" in capsys.readouterr().err


def test_audit_cli_refuses_broken_and_oversized_files_in_one_line(tmp_path, capsys):
    """Empty, truncated and mistyped .npz files and absurd frame rates: one clear line each, no traceback."""
    moving = skeleton.rest_joints()[None] + 0.01 * np.arange(40)[:, None, None]
    np.savez(tmp_path / "good.npz", joints=moving, fps=20.0)
    good = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "truncated.npz").write_bytes(good[: len(good) // 2])
    np.savez(tmp_path / "typed.npz", joints=moving, fps="fast")
    np.savez(tmp_path / "slow.npz", joints=moving[:30].astype(np.float32), fps=0.001)
    np.savez(tmp_path / "long.npz", joints=np.repeat(moving[:1], 4100, axis=0), fps=20.0)
    expected = {"empty": "not a readable .npz motion", "truncated": "not a readable .npz motion",
                "typed": "unreadable 'joints' or 'fps'", "slow": "fps 0.001 is outside 10-1000",
                "long": "audits take at most 200 s"}
    for name, says in expected.items():
        assert cli.main(["audit", str(tmp_path / f"{name}.npz")]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err and err.count("\n") == 1, (name, err)


def test_audit_cli_defaults_to_the_embedded_lcr_model(tmp_path, capsys):
    moving = skeleton.rest_joints()[None] + 0.01 * np.arange(40)[:, None, None]
    np.savez(tmp_path / "good.npz", joints=moving, fps=20.0)
    assert cli.main(["audit", str(tmp_path / "good.npz"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"].endswith("safemotion-mini-lcr") and report["concept"] == "violence"
