"""LCR on a BAMM model: `safemotion unlearn lcr` accepts it, one edit of the shared base codebook is the same for MoMask
and BAMM, and BAMM's tokens go through flagging and the policies like MoMask's."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from safemotion import cli
from safemotion.generate import GenerationRequest
from safemotion.models.model_dir import build_models, load_model_dir, save_model_dir
from safemotion.safe_generation import SafeGenerator
from safemotion.serve import schemas
from safemotion.serve.app import create_app
from safemotion.serve.encoding import decode_array
from safemotion.serve.settings import ServerSettings
from safemotion.unlearn.record import removed_base_codes, unlearning_record
from test_unlearn import lcr_args, tiny_config, write_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def unlearned(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """generator → (original model dir, LCR model dir); both generators share one RVQ-VAE."""
    root = tmp_path_factory.mktemp("bamm-lcr")
    dataset = write_dataset(root / "data")
    torch.manual_seed(0)
    momask = build_models(tiny_config())
    for layer in momask.vq.quantizer.layers:
        layer.codebook.normal_()
    bamm = build_models(dataclasses.replace(tiny_config(), generator="bamm", length_estimator=None))
    bamm.vq.load_state_dict(momask.vq.state_dict())
    with torch.no_grad():  # END likely enough that motions without a requested length end early
        bamm.mask_transformer.output_process.poseFinal.bias[bamm.mask_transformer.end_id] = 2.0
    dirs = {}
    for name, models in (("momask", momask), ("bamm", bamm)):
        source = save_model_dir(models, root / name)
        out = root / f"{name}-lcr"
        assert cli.main(lcr_args(source, dataset, out, root / f"cache-{name}")) == 0
        dirs[name] = (source, out)
    return dirs


def test_one_lcr_edit_of_the_shared_codebook_serves_both_generators(unlearned) -> None:
    edited = {name: load_file(str(out / "vq.safetensors")) for name, (_, out) in unlearned.items()}
    for key, value in edited["momask"].items():
        assert torch.equal(value, edited["bamm"][key]), key
    configs = {name: load_model_dir(out).config for name, (_, out) in unlearned.items()}
    assert removed_base_codes(configs["bamm"]) == removed_base_codes(configs["momask"]) != []
    assert configs["bamm"].generator == "bamm" and unlearning_record(configs["bamm"]).method == "lcr"
    source, out = unlearned["bamm"]
    before, after = load_file(str(source / "mask_transformer.safetensors")), load_file(
        str(out / "mask_transformer.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_bamm_tokens_are_flagged_like_momask_tokens(unlearned) -> None:
    safe = SafeGenerator.from_dir(unlearned["bamm"][1])
    removed = removed_base_codes(safe.generator.models.config)
    request = GenerationRequest("a person kicks and punches", seed=3, variations=6)  # length from the END token
    by_policy = {p: safe.generate([request], policy=p, smpl=False)[0] for p in ("sanitize", "allow")}
    for item in by_policy["sanitize"]:
        hits = np.isin(item.motion.base_tokens, removed)
        assert item.motion.length_from == "end_token"
        assert item.safety.hit_ratio == pytest.approx(hits.mean())
        assert item.safety.hit_tokens == np.flatnonzero(hits).tolist()
    assert any(item.safety.hit_tokens for item in by_policy["sanitize"])
    for allowed, sanitized in zip(by_policy["allow"], by_policy["sanitize"]):
        np.testing.assert_array_equal(allowed.motion.tokens, sanitized.motion.tokens)


def test_server_serves_the_bamm_lcr_model_with_end_token_lengths(unlearned, tmp_path: Path) -> None:
    removed = removed_base_codes(load_model_dir(unlearned["bamm"][1]).config)
    settings = ServerSettings(model=str(unlearned["bamm"][1]), data_dir=tmp_path / "data", device="cpu", threads=1)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/models").json()["models"][0]["length_estimator"] is True  # no estimator: END decides
        response = client.post("/v1/generate", json={"prompt": "a person punches", "seed": 4, "variations": 3})
        assert response.status_code == 200, response.text
        for motion in schemas.GenerateResponse.model_validate(response.json()).model_dump()["motions"]:
            tokens = decode_array(motion["tokens"])
            assert motion["length_from"] == "end_token" and motion["frames"] == 4 * len(tokens)
            assert motion["safety"]["hit_tokens"] == np.flatnonzero(np.isin(tokens[:, 0], removed)).tolist()
