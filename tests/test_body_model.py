"""The stand-in SMPL body: file format, loading and posing with the real smplx.SMPL, and IK refinement through it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch

from safemotion.motion import body_model, smpl

REST = smpl.smpl_rest_joints()


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return body_model.write_standin_smpl(tmp_path_factory.mktemp("body") / "SMPL_NEUTRAL.pkl")


@pytest.fixture(scope="module")
def model(standin: Path):
    return body_model.load_body_model(standin, dtype=torch.float64)


def _random_pose(frames: int, seed: int, scale: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(scale=scale, size=(frames, 24, 3)), rng.uniform(-1, 1, (frames, 3))


def _smplx_joints(model, pose: np.ndarray, transl: np.ndarray, betas: np.ndarray | None = None):
    """Joints [T,24,3] and vertices [T,6890,3] from the real smplx.SMPL forward pass."""
    frames = len(pose)
    betas = np.zeros((frames, 10)) if betas is None else betas
    out = model(
        global_orient=torch.from_numpy(pose[:, 0]),
        body_pose=torch.from_numpy(pose[:, 1:].reshape(frames, 69)),
        transl=torch.from_numpy(transl),
        betas=torch.from_numpy(betas),
    )
    return out.joints[:, :24].detach().numpy(), out.vertices.detach().numpy()


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance [..., V] from points [..., V, 3] to segments a-b [..., 3]."""
    ab = (b - a)[..., None, :]
    t = np.clip(((points - a[..., None, :]) * ab).sum(-1) / (ab * ab).sum(-1), 0, 1)
    return np.linalg.norm(points - (a[..., None, :] + t[..., None] * ab), axis=-1)


def test_standin_has_smpl_file_layout() -> None:
    data = body_model.build_standin_smpl()
    assert data["v_template"].shape == (6890, 3)
    assert data["f"].shape == (13776, 3) and data["f"].dtype == np.uint32
    assert data["shapedirs"].shape == (6890, 3, 10)
    assert data["posedirs"].shape == (6890, 3, 207)
    assert scipy.sparse.issparse(data["J_regressor"]) and data["J_regressor"].format == "csc"
    assert data["J_regressor"].shape == (24, 6890)
    assert data["weights"].shape == (6890, 24)
    assert data["kintree_table"].shape == (2, 24)
    assert data["kintree_table"][0, 0] == 4294967295
    np.testing.assert_array_equal(data["kintree_table"][0, 1:], smpl.PARENTS[1:])
    np.testing.assert_allclose(data["J_regressor"] @ data["v_template"], REST, atol=1e-12)
    np.testing.assert_allclose(data["J"], REST, atol=1e-12)
    weights = data["weights"]
    assert weights.min() >= 0 and np.allclose(weights.sum(1), 1.0)
    assert np.all(weights.max(0) > 0.99)  # every joint fully owns some vertices


def test_standin_mesh_is_one_closed_consistently_oriented_surface() -> None:
    data = body_model.build_standin_smpl()
    faces, vertices = data["f"].astype(np.int64), data["v_template"]
    directed = Counter(map(tuple, np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).tolist()))
    assert max(directed.values()) == 1
    assert all((b, a) in directed for a, b in directed)  # every edge shared by two faces of opposite winding
    edges = len(directed) // 2
    assert len(vertices) - edges + len(faces) == 2  # Euler characteristic of a sphere: one piece, no holes
    assert len(np.unique(faces)) == 6890
    volume = np.einsum("ij,ij->i", vertices[faces[:, 0]], np.cross(vertices[faces[:, 1]], vertices[faces[:, 2]])).sum()
    assert volume > 0  # normals point outwards


def test_smplx_loads_standin_and_zero_pose_is_rest(model, standin: Path) -> None:
    assert model.get_num_verts() == 6890 and model.get_num_faces() == 13776
    np.testing.assert_allclose(body_model.model_rest_joints(model), REST, atol=1e-5)
    joints, vertices = _smplx_joints(model, np.zeros((1, 24, 3)), np.zeros((1, 3)))
    np.testing.assert_allclose(joints[0], REST, atol=1e-5)
    np.testing.assert_allclose(vertices[0], body_model.build_standin_smpl()["v_template"], atol=1e-5)


def test_shape_directions_scale_height_and_girth(model) -> None:
    rest_vertices = body_model.build_standin_smpl()["v_template"]
    tall_joints, tall_vertices = _smplx_joints(model, np.zeros((1, 24, 3)), np.zeros((1, 3)), np.eye(10)[:1])
    np.testing.assert_allclose(tall_joints[0], 1.05 * REST, atol=1e-5)
    np.testing.assert_allclose(tall_vertices[0], 1.05 * rest_vertices, atol=1e-5)
    wide_joints, wide_vertices = _smplx_joints(model, np.zeros((1, 24, 3)), np.zeros((1, 3)), np.eye(10)[1:2])
    np.testing.assert_allclose(wide_joints[0], REST, atol=1e-5)
    moved = np.linalg.norm(wide_vertices[0] - rest_vertices, axis=1)
    np.testing.assert_allclose(moved, 0.01, atol=1e-5)


def test_smplx_posing_matches_numpy_forward_kinematics(model) -> None:
    pose, transl = _random_pose(8, seed=0)
    joints, _ = _smplx_joints(model, pose, transl)
    np.testing.assert_allclose(joints, smpl.smpl_forward_kinematics(pose, transl, REST), atol=1e-5)


def test_ik_pose_through_smplx_reproduces_the_joints(model) -> None:
    pose, transl = _random_pose(8, seed=1, scale=0.3)
    targets = smpl.smpl_forward_kinematics(pose, transl, REST)[:, :22]
    motion = smpl.joints_to_smpl(targets, rest_joints=REST)
    joints, _ = _smplx_joints(model, motion.pose, motion.transl)
    assert np.linalg.norm(joints[:, :22] - targets, axis=-1).max() < 1e-5


def test_skinned_mesh_follows_its_bones(model) -> None:
    """Posed vertices keep their distance to the bone they belong to (what capsule skinning should do)."""
    pose, transl = _random_pose(4, seed=2, scale=0.3)
    joints, vertices = _smplx_joints(model, pose, transl)
    rest_vertices = body_model.build_standin_smpl()["v_template"]
    parents = smpl.PARENTS[1:]
    rest_dist = _segment_distance(rest_vertices[None], REST[parents][:, None][:, 0], REST[1:])  # [23, V]
    owner = rest_dist.argmin(0)
    posed = np.stack([_segment_distance(v[None], joints[f, parents], joints[f, 1:]) for f, v in enumerate(vertices)])
    change = np.abs(posed[:, owner, np.arange(len(owner))] - rest_dist[owner, np.arange(len(owner))])
    assert np.median(change) < 1e-3
    assert np.percentile(change, 95) < 0.02


def test_refinement_lowers_error_and_never_worsens_a_frame(standin: Path) -> None:
    # Targets from a skeleton with longer limbs than the model: the analytic IK cannot match them exactly.
    pose, transl = _random_pose(12, seed=3, scale=0.3)
    longer = smpl.smpl_rest_joints(np.r_[smpl.clip_bone_lengths(REST[None, :22]), [0.085, 0.085]] * 1.04)
    targets = smpl.smpl_forward_kinematics(pose, transl, longer)[:, :22]
    start = smpl.joints_to_smpl(targets, rest_joints=REST)
    before = np.linalg.norm(smpl.smpl_forward_kinematics(start.pose, start.transl, REST)[:, :22] - targets, axis=-1)
    refined = body_model.refine_with_smplx(start, targets, standin, iters=40)
    after_joints = smpl.smpl_forward_kinematics(refined.pose, refined.transl, refined.rest_joints)[:, :22]
    after = np.linalg.norm(after_joints - targets, axis=-1)
    assert np.all(after.mean(1) <= before.mean(1) + 1e-6)
    assert after.mean() < 0.9 * before.mean()


def test_refinement_keeps_an_exact_solution(standin: Path) -> None:
    pose, transl = _random_pose(6, seed=4, scale=0.3)
    targets = smpl.smpl_forward_kinematics(pose, transl, REST)[:, :22]
    start = smpl.joints_to_smpl(targets, rest_joints=REST)
    refined = body_model.refine_with_smplx(start, targets, standin, iters=20)
    joints = smpl.smpl_forward_kinematics(refined.pose, refined.transl, refined.rest_joints)[:, :22]
    assert np.linalg.norm(joints - targets, axis=-1).max() < 1e-5


def test_write_is_atomic_and_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    body_model.write_standin_smpl(path)
    first = path.read_bytes()
    body_model.write_standin_smpl(path, rest_joints=1.1 * REST)
    assert path.read_bytes() != first
    assert [p.name for p in tmp_path.iterdir()] == ["model.pkl"]


def test_bad_inputs_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="write_standin_smpl"):
        body_model.load_body_model(tmp_path / "missing.pkl")
    with pytest.raises(ValueError, match=r"\[24, 3\]"):
        body_model.build_standin_smpl(REST[:22])


def test_torch_forward_kinematics_matches_smplx(model) -> None:
    pose, transl = _random_pose(8, seed=5)
    joints, _ = _smplx_joints(model, pose, transl)
    rest = torch.from_numpy(body_model.model_rest_joints(model))
    ours = body_model.smpl_forward_kinematics_torch(torch.from_numpy(pose), torch.from_numpy(transl), rest)
    np.testing.assert_allclose(ours.numpy(), joints, atol=1e-6)
