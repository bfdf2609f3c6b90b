"""`import_momask`: official checkpoint layout → model directory, identical outputs, clear errors, nothing partial."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from safemotion.models import (
    LengthEstimator,
    MaskTransformer,
    ModelConfig,
    ResidualTransformer,
    RVQVAE,
    import_momask,
    load_model_dir,
)
from safemotion.models.config import LengthEstimatorConfig, TransformerConfig, VQConfig

VQ_NAME = "rvq_nq6_dc512_nc512_noshare_qdp0.2"
MASK_NAME = "t2m_nlayer8_nhead6_ld384_ff1024_cdp0.1_rvq6ns"
RES_NAME = "tres_nlayer8_ld384_ff1024_rvq6ns_cdp0.2_sw"

# Released opt.txt contents (momask_architecture.md §8).
VQ_OPT = {
    "batch_size": "256", "checkpoints_dir": "./checkpoints", "code_dim": "512", "commit": "0.02",
    "dataset_name": "t2m", "depth": "3", "dilation_growth_rate": "3", "down_t": "2", "eval_every_e": "1",
    "feat_bias": "5", "gamma": "0.05", "gpu_id": "0", "is_continue": "False", "is_train": "True",
    "log_every": "10", "loss_vel": "0.5", "lr": "0.0002", "lr_scheduler": "[150000, 250000]", "max_epoch": "50",
    "mu": "0.99", "name": VQ_NAME, "nb_code": "512", "num_quantizers": "6", "output_emb_width": "512",
    "quantize_dropout_prob": "0.2", "recons_loss": "l1_smooth", "save_every_e": "2", "save_latest": "500",
    "shared_codebook": "False", "stride_t": "2", "vq_act": "relu", "vq_norm": "None", "warm_up_iter": "2000",
    "weight_decay": "0.0", "width": "512", "window_size": "64",
}
MASK_OPT = {
    "batch_size": "64", "checkpoints_dir": "./checkpoints", "cond_drop_prob": "0.1", "dataset_name": "t2m",
    "dropout": "0.2", "eval_every_e": "10", "ff_size": "1024", "fix_token_emb": "False", "gamma": "0.1",
    "gpu_id": "1", "gumbel_sample": "False", "is_continue": "False", "is_train": "True", "latent_dim": "384",
    "log_every": "50", "lr": "0.0002", "max_epoch": "500", "max_motion_length": "196", "milestones": "[50000]",
    "n_heads": "6", "n_layers": "8", "name": MASK_NAME, "save_latest": "500", "seed": "3407", "unit_length": "4",
    "vq_name": VQ_NAME, "warm_up_iter": "2000",
}
RES_OPT = {**MASK_OPT, "cond_drop_prob": "0.2", "name": RES_NAME, "share_weight": "True", "is_v2": "False",
           "force_mask": "False"}

TINY_VQ_OPT = {**VQ_OPT, "code_dim": "8", "output_emb_width": "8", "nb_code": "16", "width": "16", "depth": "2",
               "num_quantizers": "3"}
TINY_T_OPT = {"latent_dim": "16", "ff_size": "32", "n_layers": "2", "n_heads": "2"}


def _write_opt(folder: Path, options: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["------------ Options -------------"] + [f"{k}: {options[k]}" for k in sorted(options)]
    (folder / "opt.txt").write_text("\n".join(lines + ["-------------- End ----------------", ""]))


def write_official_layout(root: Path, states: dict[str, dict], vq_opt: dict, mask_opt: dict, res_opt: dict,
                          mean: np.ndarray, std: np.ndarray) -> Path:
    """checkpoints/t2m/... exactly as the MoMask release lays it out; returns the `checkpoints` folder."""
    t2m = root / "checkpoints" / "t2m"
    containers = {
        "vq": (t2m / VQ_NAME / "model" / "net_best_fid.tar", {"vq_model": states["vq"], "ep": 50, "total_it": 9}),
        "mask": (t2m / MASK_NAME / "model" / "latest.tar", {"t2m_transformer": states["mask"], "ep": 500}),
        "res": (t2m / RES_NAME / "model" / "net_best_fid.tar", {"res_transformer": states["res"], "ep": 480}),
        "length": (t2m / "length_estimator" / "model" / "finest.tar", {"estimator": states["length"], "epoch": 7}),
    }
    for file, container in containers.values():
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(container, file)
    _write_opt(t2m / VQ_NAME, vq_opt)
    _write_opt(t2m / MASK_NAME, mask_opt)
    _write_opt(t2m / RES_NAME, res_opt)
    (t2m / VQ_NAME / "meta").mkdir()
    np.save(t2m / VQ_NAME / "meta" / "mean.npy", mean)
    np.save(t2m / VQ_NAME / "meta" / "std.npy", std)
    return root / "checkpoints"


def _stats() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=263).astype(np.float32), rng.uniform(0.1, 2.0, size=263).astype(np.float32)


def _original_modules(config: ModelConfig, checkpoints: Path) -> dict[str, torch.nn.Module]:
    """Our modules loaded (strict) straight from the official containers."""
    t2m = checkpoints / "t2m"
    load = lambda file, key: torch.load(file, map_location="cpu", weights_only=True)[key]  # noqa: E731
    modules = {
        "vq": (RVQVAE(config.vq), load(t2m / VQ_NAME / "model" / "net_best_fid.tar", "vq_model")),
        "mask_transformer": (MaskTransformer(config.mask_transformer),
                             load(t2m / MASK_NAME / "model" / "latest.tar", "t2m_transformer")),
        "residual_transformer": (ResidualTransformer(config.residual_transformer),
                                 load(t2m / RES_NAME / "model" / "net_best_fid.tar", "res_transformer")),
        "length_estimator": (LengthEstimator(config.length_estimator),
                             load(t2m / "length_estimator" / "model" / "finest.tar", "estimator")),
    }
    for module, state in modules.values():
        module.load_state_dict(state, strict=True)
        module.eval()
    return {name: module for name, (module, _) in modules.items()}


def _outputs(modules: dict[str, torch.nn.Module], config: ModelConfig) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    q, n, text_dim = config.vq.num_quantizers, 6, config.mask_transformer.text_dim
    ids = torch.randint(0, config.vq.nb_code, (2, n, q), generator=generator)
    cond = torch.randn(2, text_dim, generator=generator)
    pad = torch.tensor([[False] * n, [False] * 4 + [True] * (n - 4)])
    res = modules["residual_transformer"]
    with torch.no_grad():
        return [
            modules["vq"].encode(torch.randn(2, 4 * n, 263, generator=generator))[0],
            modules["vq"].forward_decoder(ids),
            modules["mask_transformer"].forward_with_cond_scale(ids[..., 0], cond, pad, cond_scale=4),
            res.forward_with_cond_scale(res.embed_tokens(0, ids[..., 0]) + res.embed_tokens(1, ids[..., 1]), 2,
                                        cond, pad, cond_scale=5),
            modules["length_estimator"](cond),
        ]


# ---------------------------------------------------------------------------------- official sizes (spec)

@pytest.fixture(scope="module")
def official_checkpoints(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = json.loads((shared_dir / "reference" / "momask_state_dicts.json").read_text())
    generator = torch.Generator().manual_seed(0)
    states = {
        ours: {key: torch.randn(shape, generator=generator) * 0.05 for key, shape in spec[theirs]["params"].items()}
        for ours, theirs in (("vq", "rvq_vae"), ("mask", "mask_transformer"), ("res", "residual_transformer"),
                             ("length", "length_estimator"))
    }
    return write_official_layout(tmp_path_factory.mktemp("official"), states, VQ_OPT, MASK_OPT, RES_OPT, *_stats())


@pytest.fixture(scope="module")
def official_converted(official_checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return import_momask(official_checkpoints, tmp_path_factory.mktemp("converted") / "momask")


def test_official_config_and_files(official_converted: Path) -> None:
    config = ModelConfig.from_dict(json.loads((official_converted / "config.json").read_text()))
    assert config == ModelConfig()  # the released sizes are SafeMotion's defaults
    assert config.text_encoder == "clip" and config.fps == 20.0 and config.unit_length == 4
    card = (official_converted / "MODEL_CARD.md").read_text()
    assert "latest.tar ['t2m_transformer'], epoch 500" in card
    assert "| RVQ-VAE | 19,436,807 |" in card


def test_converted_weights_and_outputs_are_identical(official_checkpoints: Path, official_converted: Path) -> None:
    converted = load_model_dir(official_converted)
    original = _original_modules(converted.config, official_checkpoints)
    for name, module in original.items():
        theirs = converted.components()[name].state_dict()
        for key, value in module.state_dict().items():
            assert torch.equal(theirs[key], value), f"{name}.{key}"
    for a, b in zip(_outputs(original, converted.config), _outputs(converted.components(), converted.config)):
        assert torch.equal(a, b)
    mean, std = _stats()
    np.testing.assert_array_equal(converted.mean, mean)
    np.testing.assert_array_equal(converted.std, std)


# ---------------------------------------------------------------------------------- error paths (tiny sizes)

@pytest.fixture()
def tiny_checkpoints(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    vq = VQConfig(nb_code=16, code_dim=8, width=16, depth=2, num_quantizers=3)
    t = TransformerConfig(latent_dim=16, ff_size=32, num_layers=2, num_heads=2, num_tokens=16, code_dim=8,
                          num_quantizers=3)
    states = {
        "vq": RVQVAE(vq).state_dict(),
        "mask": MaskTransformer(t).state_dict(),
        "res": ResidualTransformer(t).state_dict(),
        "length": LengthEstimator(LengthEstimatorConfig()).state_dict(),
    }
    return write_official_layout(tmp_path / "src", states, TINY_VQ_OPT, {**MASK_OPT, **TINY_T_OPT},
                                 {**RES_OPT, **TINY_T_OPT}, *_stats())


def _container(checkpoints: Path, component: str) -> tuple[Path, str]:
    t2m = checkpoints / "t2m"
    return {
        "vq": (t2m / VQ_NAME / "model" / "net_best_fid.tar", "vq_model"),
        "mask": (t2m / MASK_NAME / "model" / "latest.tar", "t2m_transformer"),
        "res": (t2m / RES_NAME / "model" / "net_best_fid.tar", "res_transformer"),
    }[component]


def _edit_state(checkpoints: Path, component: str, edit) -> None:
    file, key = _container(checkpoints, component)
    container = torch.load(file, weights_only=True)
    edit(container[key])
    torch.save(container, file)


def _assert_nothing_written(tmp_path: Path) -> None:
    """Only the source checkpoints remain: no model directory and no temporary folder."""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_tiny_import_from_root_or_dataset_folder(tiny_checkpoints: Path, tmp_path: Path) -> None:
    a = import_momask(tiny_checkpoints, tmp_path / "a")
    b = import_momask(tiny_checkpoints / "t2m", tmp_path / "b")
    config = load_model_dir(a).config
    assert config == load_model_dir(b).config
    assert (config.vq.num_quantizers, config.mask_transformer.latent_dim, config.residual_transformer.cond_drop_prob) \
        == (3, 16, 0.2)


def test_fallback_container_keys_and_clip_keys(tiny_checkpoints: Path, tmp_path: Path) -> None:
    file, _ = _container(tiny_checkpoints, "vq")
    container = torch.load(file, weights_only=True)
    torch.save({"net": container["vq_model"]}, file)
    file, _ = _container(tiny_checkpoints, "mask")
    container = torch.load(file, weights_only=True)
    state = dict(container["t2m_transformer"])
    state["clip_model.token_embedding.weight"] = torch.zeros(3, 2)  # official loaders ignore CLIP weights
    torch.save({"trans": state, "ep": 3}, file)
    out = import_momask(tiny_checkpoints, tmp_path / "out")
    assert torch.equal(load_model_dir(out).mask_transformer.cond_emb.weight, state["cond_emb.weight"])


def test_missing_tensor_fails_cleanly(tiny_checkpoints: Path, tmp_path: Path) -> None:
    _edit_state(tiny_checkpoints, "res", lambda s: s.pop("quant_emb.weight"))
    out = tmp_path / "models" / "momask"
    with pytest.raises(ValueError, match=r"res_transformer'\].*missing tensor 'quant_emb.weight' "
                                         r"\(expected shape \[16, 3\]\)"):
        import_momask(tiny_checkpoints, out)
    _assert_nothing_written(tmp_path)


def test_wrong_shape_fails_cleanly(tiny_checkpoints: Path, tmp_path: Path) -> None:
    _edit_state(tiny_checkpoints, "vq", lambda s: s.update({"encoder.model.0.weight": torch.zeros(16, 251, 3)}))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"tensor 'encoder.model.0.weight' has shape \[16, 251, 3\], "
                                         r"expected \[16, 263, 3\]"):
        import_momask(tiny_checkpoints, out)
    _assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("break_it", "error", "message"),
    [
        (lambda c: shutil.rmtree(c / "t2m" / "length_estimator"), FileNotFoundError,
         "no checkpoint for the length_estimator"),
        (lambda c: (c / "t2m" / VQ_NAME / "meta" / "std.npy").unlink(), FileNotFoundError,
         "normalisation statistics not found"),
        (lambda c: _container(c, "mask")[0].write_bytes(b"garbage"), ValueError,
         "cannot be read as a weights-only torch checkpoint"),
        (lambda c: torch.save({"model": {}}, _container(c, "res")[0]), ValueError,
         r"no state dict under 'res_transformer' \(keys present: model\)"),
        (lambda c: shutil.rmtree(c / "t2m" / RES_NAME), FileNotFoundError,
         "residual transformer folder with opt.txt not found"),
        (lambda c: (c / "t2m" / MASK_NAME / "opt.txt").write_text("latent_dim 384\n"), ValueError,
         r"opt.txt:1: expected 'key: value'"),
        (lambda c: _write_opt(c / "t2m" / RES_NAME, {**RES_OPT, "share_weight": "False"}), ValueError,
         "share_weight False is not supported"),
        (lambda c: _write_opt(c / "t2m" / MASK_NAME, {**MASK_OPT, "n_heads": "five"}), ValueError,
         "option 'n_heads' must be an integer, found 'five'"),
    ],
)
def test_bad_checkpoints_fail_cleanly(tiny_checkpoints: Path, tmp_path: Path, break_it, error, message) -> None:
    break_it(tiny_checkpoints)
    out = tmp_path / "out"
    with pytest.raises(error, match=message):
        import_momask(tiny_checkpoints, out)
    _assert_nothing_written(tmp_path)


def test_existing_output_is_not_touched(tiny_checkpoints: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        import_momask(tiny_checkpoints, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_command_line(tiny_checkpoints: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from safemotion.cli import main

    out = tmp_path / "cli_model"
    assert main(["import-momask", "--checkpoints", str(tiny_checkpoints / "t2m"), "--out", str(out)]) == 0
    assert load_model_dir(out).config.vq.num_quantizers == 3
    assert main(["import-momask", "--checkpoints", str(tiny_checkpoints), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
