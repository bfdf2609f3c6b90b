"""Model directory: round trip, atomic writes, and clear errors for missing or mismatched content."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import safemotion.models.model_dir as model_dir
from safemotion.models import (
    LengthEstimatorConfig,
    ModelConfig,
    ModelDirError,
    TransformerConfig,
    VQConfig,
    build_models,
    check_model_dir,
    load_model_dir,
    read_model_config,
    save_model_dir,
)

TINY = ModelConfig(
    vq=VQConfig(dim_pose=263, nb_code=16, code_dim=8, width=16, depth=2, num_quantizers=3),
    mask_transformer=TransformerConfig(latent_dim=16, ff_size=32, num_layers=2, num_heads=2, text_dim=384,
                                       num_tokens=16, code_dim=8, num_quantizers=3),
    residual_transformer=TransformerConfig(latent_dim=16, ff_size=32, num_layers=2, num_heads=2, text_dim=384,
                                           num_tokens=16, code_dim=8, num_quantizers=3, cond_drop_prob=0.2),
    length_estimator=LengthEstimatorConfig(text_dim=384, hidden_dim=32, num_classes=50),
    text_encoder="minilm",
)


@pytest.fixture()
def models():
    torch.manual_seed(0)
    built = build_models(TINY, mean=np.linspace(-1, 1, 263), std=np.linspace(0.5, 2, 263))
    with torch.no_grad():
        for layer in built.vq.quantizer.layers:
            layer.codebook.normal_()
    return built.eval()


@pytest.fixture()
def saved(models, tmp_path: Path) -> Path:
    return save_model_dir(models, tmp_path / "model")


def _outputs(m) -> list[torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(0, 16, (2, 5, 3))
    cond = torch.randn(2, 384)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    with torch.no_grad():
        return [
            m.vq.forward_decoder(ids),
            m.vq.encode(torch.randn(2, 20, 263))[0],
            m.mask_transformer.forward_with_cond_scale(ids[..., 0], cond, pad, cond_scale=4),
            m.residual_transformer.forward_with_cond_scale(m.residual_transformer.embed_tokens(0, ids[..., 0]), 1,
                                                           cond, pad, cond_scale=5),
            m.length_estimator(cond),
        ]


def test_round_trip_gives_identical_weights_and_outputs(models, saved: Path) -> None:
    names = sorted(p.name for p in saved.iterdir())
    assert names == ["MODEL_CARD.md", "config.json", "length_estimator.safetensors", "mask_transformer.safetensors",
                     "mean.npy", "residual_transformer.safetensors", "std.npy", "vq.safetensors"]
    loaded = load_model_dir(saved)
    assert loaded.config == TINY
    assert read_model_config(saved) == TINY
    assert json.loads((saved / "config.json").read_text())["version"] == 1
    np.testing.assert_array_equal(loaded.mean, models.mean)
    np.testing.assert_array_equal(loaded.std, models.std)
    for name, module in models.components().items():
        other = loaded.components()[name]
        assert not other.training
        for key, value in module.state_dict().items():
            assert torch.equal(other.state_dict()[key], value), f"{name}.{key}"
        assert all(p.requires_grad and p.device.type == "cpu" for p in other.parameters())
    for a, b in zip(_outputs(models), _outputs(loaded)):
        assert torch.equal(a, b)
    card = (saved / "MODEL_CARD.md").read_text()
    assert "`minilm`" in card and "| Residual transformer |" in card


def test_float16_storage_halves_the_files_and_loads_as_float32(models, saved: Path, tmp_path: Path) -> None:
    half = save_model_dir(models, tmp_path / "half", dtype=torch.float16)
    for name in ("vq", "mask_transformer"):
        stored = load_file(str(half / f"{name}.safetensors"))
        assert all(t.dtype == torch.float16 for t in stored.values())
        assert (half / f"{name}.safetensors").stat().st_size < 0.6 * (saved / f"{name}.safetensors").stat().st_size
    loaded = load_model_dir(half)
    for name, module in models.components().items():
        for key, value in module.state_dict().items():
            other = loaded.components()[name].state_dict()[key]
            assert other.dtype == torch.float32
            torch.testing.assert_close(other, value.half().float(), rtol=0, atol=0)
    for a, b in zip(_outputs(models), _outputs(loaded)):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def test_model_without_length_estimator(models, tmp_path: Path) -> None:
    config = replace(TINY, length_estimator=None)
    built = build_models(config)
    out = save_model_dir(built, tmp_path / "m")
    assert not (out / "length_estimator.safetensors").exists()
    assert load_model_dir(out).length_estimator is None


def test_existing_directory_is_kept_unless_overwrite(models, saved: Path) -> None:
    with pytest.raises(FileExistsError, match="already exists"):
        save_model_dir(models, saved)
    with torch.no_grad():
        models.length_estimator.output[0].bias.fill_(3.0)
    save_model_dir(models, saved, overwrite=True)
    assert torch.all(load_model_dir(saved).length_estimator.output[0].bias == 3.0)
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model"]  # no temp or old folders left


def test_failed_write_leaves_nothing(models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing_save(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("No space left on device")
        save_file(tensors, path, metadata=metadata)

    monkeypatch.setattr(model_dir, "save_file", failing_save)
    with pytest.raises(OSError, match="No space left"):
        save_model_dir(models, tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_missing_tensor_is_named(saved: Path) -> None:
    file = saved / "mask_transformer.safetensors"
    tensors = load_file(file)
    del tensors["cond_emb.weight"]
    save_file(tensors, file)
    with pytest.raises(ModelDirError, match=r"missing tensor 'cond_emb.weight' \(expected shape \[16, 384\]\)"):
        load_model_dir(saved)


def test_mismatched_shape_names_expected_and_found(saved: Path) -> None:
    file = saved / "vq.safetensors"
    tensors = load_file(file)
    tensors["quantizer.layers.1.codebook"] = torch.zeros(32, 8)
    tensors["extra.weight"] = torch.zeros(2)
    save_file(tensors, file)
    with pytest.raises(ModelDirError) as err:
        load_model_dir(saved)
    message = str(err.value)
    assert "vq.safetensors" in message
    assert "tensor 'quantizer.layers.1.codebook' has shape [32, 8], expected [16, 8]" in message
    assert "unexpected tensor 'extra.weight' (shape [2])" in message


def test_integer_tensor_is_rejected(saved: Path) -> None:
    file = saved / "length_estimator.safetensors"
    tensors = load_file(file)
    tensors["output.0.bias"] = tensors["output.0.bias"].long()
    save_file(tensors, file)
    with pytest.raises(ModelDirError, match="'output.0.bias' is not floating point"):
        check_model_dir(saved)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: (d / "residual_transformer.safetensors").unlink(), "weight file missing"),
        (lambda d: (d / "std.npy").unlink(), "std.npy: missing"),
        (lambda d: np.save(d / "mean.npy", np.zeros(251, np.float32)), r"mean has shape \[251\], expected \[263\]"),
        (lambda d: np.save(d / "std.npy", np.zeros(263, np.float32)), "std has 263 non-positive entries"),
        (lambda d: (d / "vq.safetensors").write_bytes(b"not safetensors"), "not a readable safetensors file"),
        (lambda d: (d / "config.json").write_text("{\n  \"vq\": [\n"), r"config.json:\d+: invalid JSON"),
        (lambda d: (d / "config.json").unlink(), "not a model directory"),
    ],
)
def test_broken_directories_raise_clear_errors(saved: Path, edit, message: str) -> None:
    edit(saved)
    with pytest.raises(ModelDirError, match=message):
        load_model_dir(saved)


def test_inconsistent_config_is_rejected(saved: Path) -> None:
    data = json.loads((saved / "config.json").read_text())
    data["text_encoder"] = "clip"
    (saved / "config.json").write_text(json.dumps(data))
    with pytest.raises(ModelDirError, match="mask_transformer.text_dim is 384 but must be 512"):
        load_model_dir(saved)
    data["text_encoder"] = "minilm"
    data["version"] = 2
    (saved / "config.json").write_text(json.dumps(data))
    with pytest.raises(ModelDirError, match="config version 2 is not supported"):
        read_model_config(saved)
