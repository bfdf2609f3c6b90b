"""The body mesh: `safemotion serve --body-model` serves the template at GET /v1/body-model (404 without one), and the
add-on skins each new SMPL armature with it (real bpy wheel, real server, the procedural stand-in body model)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from server_support import ServerProcess, build_tiny_lcr_model

from safemotion.motion import skeleton
from safemotion.motion.body_model import (
    NUM_FACES,
    NUM_VERTICES,
    load_body_model,
    model_rest_joints,
    write_standin_smpl,
)
from safemotion.serve import schemas
from safemotion.serve.app import create_app
from safemotion.serve.encoding import decode_array
from safemotion.serve.server import check_start
from safemotion.serve.settings import ServerSettings

try:
    import bpy
except ImportError:
    bpy = None
if bpy is not None:
    from addon_support import addon, clean_scene, use_server  # noqa: F401 (fixtures)

needs_bpy = pytest.mark.skipif(bpy is None, reason="needs the bpy wheel")
PROMPT = "a person walks forward"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny random LCR model directory and a stand-in SMPL body model file."""
    root = tmp_path_factory.mktemp("body_mesh")
    return {"root": root, "model": build_tiny_lcr_model(root / "tiny-lcr"),
            "body": write_standin_smpl(root / "standin_smpl.pkl")}


def settings_for(files, name: str, **extra) -> ServerSettings:
    return ServerSettings(model=str(files["model"]), data_dir=files["root"] / name, device="cpu", threads=1, **extra)


# ---------------------------------------------------------------------------------------------- server

def test_without_a_body_model_the_endpoint_is_404_and_models_says_so(files):
    with TestClient(create_app(settings_for(files, "plain"))) as client:
        assert client.get("/v1/models").json()["body_model"] is False
        response = client.get("/v1/body-model")
    assert response.status_code == 404 and "--body-model" in response.json()["detail"]


def test_body_model_endpoint_serves_the_template_mesh_and_weights(files):
    with TestClient(create_app(settings_for(files, "body", body_model=files["body"]))) as client:
        assert client.get("/v1/models").json()["body_model"] is True
        response = client.get("/v1/body-model")
    assert response.status_code == 200
    body = schemas.BodyModelResponse.model_validate(response.json()).model_dump()
    vertices, faces = decode_array(body["vertices"]), decode_array(body["faces"])
    weights, rest = decode_array(body["weights"]), decode_array(body["rest_joints"])
    assert (body["vertices"]["dtype"], body["faces"]["dtype"], body["weights"]["dtype"]) == (
        "float32", "int32", "float32")
    assert vertices.shape == (NUM_VERTICES, 3) and faces.shape == (NUM_FACES, 3) and weights.shape == (NUM_VERTICES, 24)
    assert body["joint_names"] == list(skeleton.SMPL24_NAMES) and body["parents"] == list(skeleton.SMPL24_PARENTS)
    assert faces.min() == 0 and faces.max() == NUM_VERTICES - 1
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
    model = load_body_model(files["body"])
    np.testing.assert_allclose(vertices, model.v_template.numpy(), atol=1e-6)
    np.testing.assert_allclose(rest, model_rest_joints(model), atol=1e-5)


def test_a_missing_body_model_file_refuses_to_start(files):
    with pytest.raises(FileNotFoundError, match="--body-model .*no such file"):
        check_start(settings_for(files, "missing", body_model=files["root"] / "nope.pkl"))


# ---------------------------------------------------------------------------------------------- add-on

@pytest.fixture(scope="module")
def body_server(files):
    """`safemotion serve --body-model` with the stand-in body."""
    server = ServerProcess(files["model"], files["root"] / "served", files["root"] / "server.log",
                           "--body-model", str(files["body"]))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def scene(addon, clean_scene, body_server):
    use_server(body_server.url)
    settings = clean_scene.safemotion
    settings.prompt, settings.seconds, settings.random_seed, settings.seed = PROMPT, 2.0, False, 8
    settings.variations, settings.policy = 1, "SANITIZE"
    return clean_scene


def meshes() -> list:
    return [obj for obj in bpy.data.objects if obj.type == "MESH"]


@needs_bpy
def test_generate_skins_the_new_smpl_armature_with_the_body_mesh(addon, scene, body_server):
    assert not scene.safemotion.skin_body  # off by default: the bundled server has no body model
    scene.safemotion.skin_body = True
    assert bpy.ops.safemotion.generate() == {"FINISHED"}
    rig = scene.safemotion.takes[0].armature
    (body,) = meshes()
    assert body.parent == rig and len(body.data.vertices) == NUM_VERTICES and len(body.data.polygons) == NUM_FACES
    assert sorted(g.name for g in body.vertex_groups) == sorted(b.name for b in rig.data.bones)
    (modifier,) = body.modifiers
    assert modifier.type == "ARMATURE" and modifier.object == rig

    rest = np.array([v.co for v in body.data.vertices])
    weights = np.zeros((NUM_VERTICES, len(body.vertex_groups)))
    for v in body.data.vertices:
        for g in v.groups:
            weights[v.index, g.group] = g.weight
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
    # At rest the template sits on the motion's skeleton: each vertex shifted by its dominant joint's offset.
    served = addon.client.BackendClient(body_server.url).body_model()
    names = served["joint_names"]
    template, model_rest, served_weights = (addon.client.decode_array(served[key])
                                            for key in ("vertices", "rest_joints", "weights"))
    heads = np.array([rig.data.bones[name].head_local for name in names])
    to_z_up = addon.smpl_math.points_to_z_up
    expected_rest = to_z_up(template) + (heads - to_z_up(model_rest))[served_weights.argmax(axis=1)]
    np.testing.assert_allclose(rest, expected_rest, atol=1e-5)
    offsets = np.linalg.norm(heads - to_z_up(model_rest), axis=1)
    assert offsets.max() > 1e-3  # the fitted body differs from the template, so the shift is exercised
    rigid = np.flatnonzero(weights.max(axis=1) > 0.999)
    assert len(rigid) > NUM_VERTICES // 2

    scene.frame_set(scene.safemotion.takes[0].frame_start + 20)
    evaluated = body.evaluated_get(bpy.context.evaluated_depsgraph_get())
    posed = np.array([v.co for v in evaluated.to_mesh().vertices])
    evaluated.to_mesh_clear()
    moved = np.linalg.norm(posed - rest, axis=1)
    assert posed.shape == rest.shape and moved.max() > 0.05
    # Rigid vertices follow their bone exactly: pose matrix times the inverse rest matrix.
    for j in np.unique(weights[rigid].argmax(axis=1)):
        name = body.vertex_groups[int(j)].name
        deform = np.array(rig.pose.bones[name].matrix @ rig.data.bones[name].matrix_local.inverted())
        own = rigid[weights[rigid].argmax(axis=1) == j]
        expected = rest[own] @ deform[:3, :3].T + deform[:3, 3]
        np.testing.assert_allclose(posed[own], expected, atol=1e-4)


@needs_bpy
def test_skin_body_off_builds_the_bare_armature(addon, scene):
    scene.safemotion.skin_body = False
    assert bpy.ops.safemotion.generate() == {"FINISHED"}
    assert meshes() == [] and scene.safemotion.takes[0].armature is not None
