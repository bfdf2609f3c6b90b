"""`safemotion import-momask --bamm`: the BAMM release folder + MoMask's shared files → one BAMM model directory,
strict against the spec's keys; missing or mis-shaped tensors and unsupported options fail and write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from safemotion import cli
from safemotion.models import (
    LengthEstimator,
    MaskTransformer,
    ResidualTransformer,
    RVQVAE,
    import_momask,
    load_model_dir,
)
from safemotion.models.bamm_transformer import BammTransformer
from safemotion.models.config import LengthEstimatorConfig, TransformerConfig, VQConfig
from safemotion.models.model_dir import ModelDirError, check_state_dict
from test_momask_import import MASK_OPT, RES_OPT, TINY_T_OPT, TINY_VQ_OPT, VQ_OPT, _stats, write_official_layout

BAMM_NAME = "2024-02-14-14-27-29_8_GPT_officialTrans_2iterPrdictEnd"
# BAMM's option keys (bamm_architecture.md §8) with the release's known values and sizes.
BAMM_OPT = {**{k: v for k, v in MASK_OPT.items() if k != "fix_token_emb"}, "name": BAMM_NAME, "trans": "official",
            "share_weight": "True", "force_mask": "False", "checkpoints_dir": "./log/t2m"}
TINY_T = TransformerConfig(latent_dim=16, ff_size=32, num_layers=2, num_heads=2, num_tokens=16, code_dim=8,
                           num_quantizers=3)


@pytest.fixture()
def release(tmp_path: Path) -> tuple[Path, Path]:
    """(checkpoints, BAMM folder) laid out as MoMask's and BAMM's download scripts leave them, tiny sizes."""
    torch.manual_seed(0)
    vq = VQConfig(nb_code=16, code_dim=8, width=16, depth=2, num_quantizers=3)
    states = {"vq": RVQVAE(vq).state_dict(), "mask": MaskTransformer(TINY_T).state_dict(),
              "res": ResidualTransformer(TINY_T).state_dict(),
              "length": LengthEstimator(LengthEstimatorConfig()).state_dict()}
    checkpoints = write_official_layout(tmp_path / "src", states, TINY_VQ_OPT, {**MASK_OPT, **TINY_T_OPT},
                                        {**RES_OPT, **TINY_T_OPT}, *_stats())
    bamm = tmp_path / "src" / "log" / "t2m" / "t2m" / BAMM_NAME
    (bamm / "model").mkdir(parents=True)
    torch.save({"t2m_transformer": BammTransformer(TINY_T).state_dict(), "opt_t2m_transformer": {}, "ep": 1999,
                "total_it": 50000}, bamm / "model" / "latest.tar")
    options = {**BAMM_OPT, **TINY_T_OPT}
    (bamm / "opt.txt").write_text("------------ Options -------------\n" + "".join(
        f"{k}: {options[k]}\n" for k in sorted(options)) + "-------------- End ----------------\n")
    return checkpoints, bamm


def _import(checkpoints: Path, bamm: Path, out: Path, capsys) -> tuple[int, str]:
    code = cli.main(["import-momask", "--checkpoints", str(checkpoints), "--bamm", str(bamm), "--out", str(out)])
    return code, capsys.readouterr().err


def _edit(bamm: Path, edit) -> None:
    file = bamm / "model" / "latest.tar"
    container = torch.load(file, weights_only=True)
    edit(container["t2m_transformer"])
    torch.save(container, file)


def test_bamm_release_imports_strictly_into_one_model_directory(release, tmp_path: Path, capsys) -> None:
    checkpoints, bamm = release
    code, err = _import(checkpoints, bamm, tmp_path / "bamm", capsys)
    assert code == 0, err
    models = load_model_dir(tmp_path / "bamm")
    assert models.config.generator == "bamm" and isinstance(models.mask_transformer, BammTransformer)
    source = torch.load(bamm / "model" / "latest.tar", weights_only=True)["t2m_transformer"]
    for key, value in models.mask_transformer.state_dict().items():
        assert torch.equal(value, source[key]), key
    residual = torch.load(checkpoints / "t2m" / RES_OPT["name"] / "model" / "net_best_fid.tar",
                          weights_only=True)["res_transformer"]
    assert torch.equal(models.residual_transformer.embed_proj_shared_weight, residual["embed_proj_shared_weight"])
    card = (tmp_path / "bamm" / "MODEL_CARD.md").read_text()
    assert "BAMM (t2m) converted" in card and "latest.tar ['t2m_transformer'], epoch 1999" in card
    assert "last round(L/2) positions" in card
    assert json.loads((tmp_path / "bamm" / "config.json").read_text())["mask_transformer"]["latent_dim"] == 16


@pytest.mark.parametrize("edit, message", [
    (lambda state: state.pop("cond_emb.bias"), "missing tensor 'cond_emb.bias'"),
    (lambda state: state.update({"token_emb.weight": torch.zeros(18, 8)}),  # MoMask's 514-row layout
     "tensor 'token_emb.weight' has shape [18, 8], expected [19, 8]"),
    (lambda state: state.update({"output_process.poseFinal.bias": torch.zeros(16)}),
     "tensor 'output_process.poseFinal.bias' has shape [16], expected [17]"),
])
def test_missing_or_mis_shaped_tensor_is_named_and_nothing_is_written(release, tmp_path: Path, capsys, edit,
                                                                      message) -> None:
    checkpoints, bamm = release
    _edit(bamm, edit)
    code, err = _import(checkpoints, bamm, tmp_path / "out", capsys)
    assert code != 0 and message in err and "latest.tar" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_unreleased_backbone_and_missing_folder_are_refused(release, tmp_path: Path, capsys) -> None:
    checkpoints, bamm = release
    text = (bamm / "opt.txt").read_text().replace("trans: official", "trans: t2mgpt")
    (bamm / "opt.txt").write_text(text)
    code, err = _import(checkpoints, bamm, tmp_path / "out", capsys)
    assert code != 0 and "trans 't2mgpt' is not supported" in err
    code, err = _import(checkpoints, tmp_path / "nowhere", tmp_path / "out", capsys)
    assert code != 0 and "BAMM folder with opt.txt not found" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_a_momask_state_dict_is_not_a_bamm_one() -> None:
    with pytest.raises(ModelDirError, match="token_emb.weight"):
        check_state_dict(BammTransformer(TINY_T), MaskTransformer(TINY_T).state_dict(), "momask weights")


@pytest.fixture(scope="module")
def official_bamm(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """Release sizes: MoMask's files and the BAMM folder, every tensor drawn from the spec's key and shape lists."""
    momask = json.loads((shared_dir / "reference" / "momask_state_dicts.json").read_text())
    spec = json.loads((shared_dir / "reference" / "bamm_state_dicts.json").read_text())
    generator = torch.Generator().manual_seed(0)
    random = lambda params: {key: torch.randn(shape, generator=generator) * 0.05  # noqa: E731
                             for key, shape in params.items()}
    states = {ours: random(momask[theirs]["params"]) for ours, theirs in (
        ("vq", "rvq_vae"), ("mask", "mask_transformer"), ("res", "residual_transformer"),
        ("length", "length_estimator"))}
    root = tmp_path_factory.mktemp("official-bamm")
    checkpoints = write_official_layout(root, states, VQ_OPT, MASK_OPT, RES_OPT, *_stats())
    bamm = root / "log" / "t2m" / "t2m" / BAMM_NAME
    (bamm / "model").mkdir(parents=True)
    weights = random(spec["bamm_transformer"]["params"])
    torch.save({spec["bamm_transformer"]["container_key"]: weights, "ep": 2000}, bamm / "model" / "latest.tar")
    (bamm / "opt.txt").write_text("------------ Options -------------\n" + "".join(
        f"{k}: {BAMM_OPT[k]}\n" for k in sorted(BAMM_OPT)) + "-------------- End ----------------\n")
    return checkpoints, bamm, weights


def test_official_size_release_built_from_the_spec_imports_strictly(official_bamm, tmp_path: Path) -> None:
    checkpoints, bamm, weights = official_bamm
    models = load_model_dir(import_momask(checkpoints, tmp_path / "bamm", bamm=bamm))
    assert models.config.generator == "bamm" and models.config.mask_transformer == TransformerConfig()
    state = models.mask_transformer.state_dict()
    assert list(state) == list(weights) and all(torch.equal(state[k], weights[k]) for k in weights)
