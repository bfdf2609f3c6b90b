"""Motion-X import end to end: a generated Motion-X-layout fixture posed by a stand-in SMPL-X model → dataset →
HMU Motion-X keyword split → `safemotion eval-vq`; malformed clips fail naming the file and build nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from safemotion import cli
from safemotion.data.motionx_import import (
    load_smplx,
    read_motionx_motion,
    resample_parameters,
    smplx_joints,
)
from safemotion.models.config import ModelConfig, TransformerConfig, VQConfig
from safemotion.models.model_dir import build_models, save_model_dir
from smplx_standin import standin_rest_joints, write_standin_smplx

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLIPS = {  # id → caption file text (humanml lines are HumanML3D-tagged, other subsets plain sentences)
    "humanml/000001": "a person walks forward#a/DET person/NOUN walk/VERB forward/ADV#0.0#0.0\n",
    "humanml/000002": "someone waves with the right hand#x/X#0.0#0.0\n",
    "kungfu/subset_0001/Kick_clip_1": "A man performs a kungfu kick.\n",
    "fitness/subset_0002/Boxing_clip_3": "A person is boxing, throwing a jab and a punch.\n",
    "idea400/subset_0003/Sit_down_clip_2": "A person sits down slowly on a chair.\n",
    "game_motion/subset_0004/Gun_clip_4": "The character aims and shoots a gun.\n",
}


def clip_parameters(seed: int, frames: int = 105) -> np.ndarray:
    """(frames, 322) 30 fps parameters of a walk-like motion: moving root, swinging legs and arms, constant betas."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / 30.0
    motion = np.zeros((frames, 322))
    motion[:, 0:3] = [0.0, 0.3 * seed, 0.0]  # heading
    phase = 2 * np.pi * 1.2 * t
    for joint, sign in ((1, 1), (2, -1), (16, -1), (17, 1)):  # hips and shoulders (body joint j at 3j .. 3j+3)
        motion[:, 3 * joint] = sign * 0.4 * np.sin(phase)
    motion[:, 309:312] = np.stack([0.1 * t * seed, 0.9 + 0.01 * np.sin(2 * phase), 0.8 * t], axis=1)
    motion[:, 312:322] = rng.normal(0, 0.5, 10)
    motion[:, 159:209] = rng.normal(0, 0.3, 50)
    return motion


def write_motionx(root: Path, overrides: dict[str, np.ndarray | bytes] | None = None) -> Path:
    """Motion-X layout under root: motion_data/smplx_322/<id>.npy and texts/semantic_labels/<id>.txt."""
    for index, (clip_id, text) in enumerate(CLIPS.items()):
        motion_file = root / "motion_data" / "smplx_322" / f"{clip_id}.npy"
        text_file = root / "texts" / "semantic_labels" / f"{clip_id}.txt"
        motion_file.parent.mkdir(parents=True, exist_ok=True)
        text_file.parent.mkdir(parents=True, exist_ok=True)
        np.save(motion_file, clip_parameters(index).astype(np.float32))
        text_file.write_text(text, encoding="utf-8")
    for clip_id, value in (overrides or {}).items():
        target = root / "motion_data" / "smplx_322" / clip_id
        if isinstance(value, bytes):
            target.write_bytes(value)
        elif clip_id.endswith(".npz"):  # a re-export that carries its frame rate
            target.with_suffix(".npy").unlink()
            np.savez(target, motion=value, fps=np.float32(25.0))
        else:
            np.save(target, value)
    return root


@pytest.fixture(scope="module")
def smplx_dir(tmp_path_factory) -> Path:
    return write_standin_smplx(tmp_path_factory.mktemp("body") / "smplx")


def test_body_is_posed_once_through_smplx_at_20_fps(smplx_dir: Path) -> None:
    model = load_smplx(smplx_dir)
    still = np.zeros((3, 322))
    still[:, 309:312] = [0.5, 0.9, -0.2]
    joints = smplx_joints(still, model)
    np.testing.assert_allclose(joints[0], standin_rest_joints()[:22] + [0.5, 0.9, -0.2], atol=1e-6)  # no 2nd transl
    motion = clip_parameters(2)
    resampled = resample_parameters(motion, 30.0, 20.0)
    assert len(resampled) == 70  # 104 frames of 1/30 s = 3.47 s → 70 frames at 20 fps
    np.testing.assert_allclose(resampled[::2], motion[::3][:35], atol=1e-9)  # every 3rd 30 fps frame is on the grid
    posed = smplx_joints(resampled, model)
    bones = np.linalg.norm(posed[:, 1:] - posed[:, [0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18,
                                                      19]], axis=-1)
    assert np.ptp(bones, axis=0).max() < 1e-6  # rigid: slerped rotations keep every bone length


def test_motionx_fixture_to_dataset_split_and_eval_vq(smplx_dir: Path, tmp_path: Path, capsys) -> None:
    source = write_motionx(tmp_path / "motionx")
    out = tmp_path / "dataset"
    assert cli.main(["data", "build", "--motionx", str(source), "--smplx-model", str(smplx_dir), "--out", str(out),
                     "--workers", "1"]) == 0
    capsys.readouterr()
    stats = json.loads((out / "stats.json").read_text())
    assert stats["per_source"] == {"motionx": len(CLIPS)} and stats["ids"] == 2 * len(CLIPS)
    index = (out / "index.csv").read_text().splitlines()
    assert index[1].startswith("Y000000,motionx,fitness/subset_0002/Boxing_clip_3,")
    first = np.load(out / "new_joint_vecs" / "Y000000.npy")
    assert first.shape == (69, 263) and np.all(np.isfinite(first))
    assert np.load(out / "new_joints" / "Y000000.npy").shape == (69, 22, 3)

    assert cli.main(["data", "split", "--data", str(out), "--concept", "violence_motionx", "--rule", "paper"]) == 0
    capsys.readouterr()
    ids = {line.split(",")[0]: line.split(",")[2] for line in index[1:]}
    forget = set()
    for split in ("train", "val", "test"):
        forget |= set((out / "kw_splits" / "paper" / f"{split}-w-violence_motionx.txt").read_text().split())
    violent = {clip for clip in CLIPS if any(word in CLIPS[clip] for word in ("kick", "punch", "jab", "gun", "box"))}
    assert {ids[i.lstrip("M")] for i in forget} == violent

    model = save_model_dir(build_models(ModelConfig(
        vq=VQConfig(nb_code=16, code_dim=8, width=8, depth=1),
        mask_transformer=TransformerConfig(latent_dim=16, ff_size=32, num_layers=1, num_heads=2, text_dim=384,
                                           num_tokens=16, code_dim=8),
        residual_transformer=TransformerConfig(latent_dim=16, ff_size=32, num_layers=1, num_heads=2, text_dim=384,
                                               num_tokens=16, code_dim=8),
        length_estimator=None, text_encoder="minilm")), tmp_path / "model")
    assert cli.main(["eval-vq", "--model", str(model), "--data", str(out), "--split", "all"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["clips"] == 2 * len(CLIPS) and np.isfinite(report["mpjpe_m"])


@pytest.mark.parametrize("name, value, message", [
    ("humanml/000002.npy", np.zeros((90, 212), np.float32), "shape [90, 212]; Motion-X SMPL-X parameters are"),
    ("humanml/000002.npy", np.full((90, 322), np.nan, np.float32), "contains NaN or infinite values"),
    ("humanml/000002.npz", np.zeros((90, 322), np.float32), "frame rate 25 fps; Motion-X clips are 30 fps"),
    ("humanml/000002.npy", b"not a numpy file", "not a readable Motion-X array"),
])
def test_malformed_clip_names_the_file_and_builds_nothing(smplx_dir: Path, tmp_path: Path, capsys, name, value,
                                                           message) -> None:
    source = write_motionx(tmp_path / "motionx", {name: value})
    code = cli.main(["data", "build", "--motionx", str(source), "--smplx-model", str(smplx_dir),
                     "--out", str(tmp_path / "dataset"), "--workers", "1"])
    err = capsys.readouterr().err
    assert code != 0 and message in err and str(source / "motion_data" / "smplx_322" / name) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["motionx"]
    with pytest.raises(ValueError, match=re.escape(message)):
        read_motionx_motion(source / "motion_data" / "smplx_322" / name)


def test_smpl_model_and_missing_model_are_refused(tmp_path: Path, capsys) -> None:
    source = write_motionx(tmp_path / "motionx")
    code = cli.main(["data", "build", "--motionx", str(source), "--smplx-model", str(tmp_path / "none"),
                     "--out", str(tmp_path / "dataset")])
    assert code != 0 and "no SMPL-X model found" in capsys.readouterr().err
    folder = tmp_path / "smpl"
    folder.mkdir()
    write_standin_smplx(tmp_path / "real")
    with np.load(tmp_path / "real" / "SMPLX_NEUTRAL.npz") as data:
        arrays = dict(data)
    arrays["v_template"] = arrays["v_template"][:6890]
    np.savez(folder / "SMPLX_NEUTRAL.npz", **arrays)
    code = cli.main(["data", "build", "--motionx", str(source), "--smplx-model", str(folder),
                     "--out", str(tmp_path / "dataset")])
    assert code != 0 and "6,890 vertices" in capsys.readouterr().err
    assert not (tmp_path / "dataset").exists()
