"""Unlearning end to end on a tiny model and a tiny synthetic dataset: LCR through the CLI (record, determinism,
untouched transformers, edited rows, statistics cache), UCE/RECE closed forms against direct solves, fine-tuning on
the retain split, calibration pieces, and bad inputs that must fail before anything is written."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from safemotion import cli
from safemotion.data.concept_splits import write_concept_splits
from safemotion.decoding import SamplingConfig
from safemotion.generate import bf16_is_native
from safemotion.models.config import LengthEstimatorConfig, ModelConfig, TransformerConfig, VQConfig
from safemotion.models.model_dir import build_models, load_model_dir, read_model_config, save_model_dir
from safemotion.data.motion_dataset import load_motion
from safemotion.motion.features import recover_from_ric
from safemotion.motion.normalization import Normalizer
from safemotion.unlearn.audit import audit_joints, encode_features
from safemotion.unlearn.calibration import (
    CalibrationOptions,
    calibration_captions,
    hit_ratio_scores,
    run_audit_calibration,
)
from safemotion.unlearn.concept_split import load_concept_split
from safemotion.unlearn.code_stats import (
    StatsSettings,
    caption_windows,
    collect_codes,
    encoding_vq,
    random_crop,
)
from safemotion.unlearn.cond_edit import (
    CondEditSettings,
    CondTexts,
    edited_copy,
    forget_words,
    rece_adversarial,
    uce_weight,
)
from safemotion.unlearn.finetune import FinetuneOptions, run_finetune
from safemotion.unlearn.flagging import calibrate_threshold, original_codebook_models, review
from safemotion.unlearn.lcr import code_presence, orthogonal_projection_vectors, replacement_vectors, select_codes
from safemotion.unlearn.record import (
    ORIGINAL_CODEBOOKS_FILE,
    SafetySettings,
    file_sha256,
    load_original_codebooks,
    safety_settings,
    unlearning_record,
    update_config_section,
)

NUM_CODES = 64
TEXT_DIM = 384
FORGET_LINES = "a person punches forward#a/DET#0.0#0.0\nsomeone kicks high#x/X#0.0#0.0\n"
RETAIN_LINES = "a person walks forward#a/DET#0.0#0.0\n"
SUB_CLIP_LINE = "a person waves#x/X#0.5#2.75\n"  # frames 10..55: kept only for clips of at least 50 frames


def tiny_config() -> ModelConfig:
    transformer = TransformerConfig(latent_dim=32, ff_size=64, num_layers=1, num_heads=2, text_dim=TEXT_DIM,
                                    num_tokens=NUM_CODES, code_dim=32)
    return ModelConfig(
        vq=VQConfig(nb_code=NUM_CODES, code_dim=32, width=32, depth=1),
        mask_transformer=transformer,
        residual_transformer=dataclasses.replace(transformer, cond_drop_prob=0.2),
        length_estimator=LengthEstimatorConfig(text_dim=TEXT_DIM, hidden_dim=32),
        text_encoder="minilm",
    )


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    models = build_models(tiny_config())
    for layer in models.vq.quantizer.layers:
        layer.codebook.normal_()
    return save_model_dir(models, tmp_path_factory.mktemp("model") / "tiny")


def write_dataset(root: Path) -> Path:
    """10 clips of 48..147 frames; even clips are violent (two explicit captions, shifted features)."""
    rng = np.random.default_rng(0)
    (root / "new_joint_vecs").mkdir(parents=True)
    (root / "texts").mkdir()
    ids = []
    for i in range(10):
        clip_id = f"{i:06d}"
        motion = np.cumsum(rng.normal(scale=0.05, size=(48 + 11 * i, 263)), axis=0).astype(np.float32)
        if i % 2 == 0:
            motion[:, :40] += 3.0
        np.save(root / "new_joint_vecs" / f"{clip_id}.npy", motion)
        lines = (FORGET_LINES if i % 2 == 0 else RETAIN_LINES) + SUB_CLIP_LINE
        (root / "texts" / f"{clip_id}.txt").write_text(lines, encoding="utf-8")
        ids.append(clip_id)
    for split, members in (("train", ids[:8]), ("val", ids[8:]), ("test", ids[8:]), ("train_val", ids)):
        (root / f"{split}.txt").write_text("\n".join(members) + "\n", encoding="utf-8")
    write_concept_splits(root, "violence", "word_boundary")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "tiny")


def lcr_args(model: Path, data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["unlearn", "lcr", "--model", str(model), "--data", str(data), "--out", str(out), "--k", "4",
            "--repeats", "3", "--device", "cpu", "--no-progress", "--cache-dir", str(cache), *extra]


def run_cli(args: list[str], capsys) -> tuple[int, dict | str]:
    code = cli.main(args)
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else captured.err)


# ---------------------------------------------------------------------------------------------- LCR

@pytest.fixture(scope="module")
def lcr_dir(model_dir, dataset, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lcr")
    assert cli.main(lcr_args(model_dir, dataset, root / "out", root / "cache")) == 0
    return root / "out", root / "cache"


def test_lcr_writes_a_model_directory_with_its_record(model_dir, dataset, lcr_dir):
    out, cache = lcr_dir
    models = load_model_dir(out)
    record = unlearning_record(models.config)
    assert record.method == "lcr" and record.concept == "violence" and record.rule == "word_boundary"
    assert record.settings["k"] == 4 and record.settings["alpha"] == 1.0 and record.settings["layers"] == [0]
    assert record.settings["seed"] == 0 and record.settings["repeats"] == 3 and not record.settings["orthogonal"]
    # 5 forget clips × (2 lines + sub-clip except in the 48-frame clip) × 3 repeats; 5 retain clips × 2 lines × 3
    assert record.settings["samples"] == {"forget": (2 * 5 + 4) * 3, "retain": 2 * 5 * 3}
    forget_file = dataset / "kw_splits" / "word_boundary" / "train_val-w-violence.txt"
    assert record.split_files["forget"] == {"path": "kw_splits/word_boundary/train_val-w-violence.txt",
                                            "sha256": file_sha256(forget_file), "ids": 5}
    assert record.split_files["retain"]["ids"] == 5
    assert record.source_model["sha256"]["vq"] == file_sha256(model_dir / "vq.safetensors")
    removed = record.removed_codes[0]
    assert 4 <= len(removed) <= 8 and removed == sorted(removed)
    assert models.config.safety is None
    assert "## Unlearning" in (out / "MODEL_CARD.md").read_text()
    original = load_model_dir(model_dir).vq.quantizer.layers[0].codebook
    assert torch.equal(load_original_codebooks(out)[0], original)


def test_lcr_changes_only_the_selected_codebook_rows(model_dir, lcr_dir):
    out, _ = lcr_dir
    for name in ("mask_transformer", "residual_transformer", "length_estimator"):
        assert (out / f"{name}.safetensors").read_bytes() == (model_dir / f"{name}.safetensors").read_bytes()
    for name in ("mean.npy", "std.npy"):
        assert (out / name).read_bytes() == (model_dir / name).read_bytes()
    before, after = load_file(str(model_dir / "vq.safetensors")), load_file(str(out / "vq.safetensors"))
    assert before.keys() == after.keys()
    changed = [key for key in before if not torch.equal(before[key], after[key])]
    assert changed == ["quantizer.layers.0.codebook"]
    removed = unlearning_record(read_model_config(out)).removed_codes[0]
    rows_changed = (before[changed[0]] != after[changed[0]]).any(dim=1).nonzero().flatten().tolist()
    assert rows_changed == removed
    expected = replacement_vectors(before[changed[0]], removed, alpha=1.0, seed=0)
    assert torch.equal(after[changed[0]][removed], expected)


def test_lcr_selection_matches_counts_recomputed_from_the_cached_table(model_dir, dataset, lcr_dir):
    out, cache = lcr_dir
    models = load_model_dir(model_dir)
    table, cache_file, hit = collect_codes(models, dataset, StatsSettings(repeats=3), cache, progress=False)
    assert hit and cache_file.parent == cache
    assert table.codes.shape == (table.sample_crop.max() + 1, 49, 1) and table.lengths.max() <= 49
    forget_ids = set((dataset / "kw_splits/word_boundary/train_val-w-violence.txt").read_text().split())
    rows = {True: [], False: []}
    for i in range(len(table)):
        codes = table.codes[table.sample_crop[i], :, 0]
        rows[table.clip_ids[table.sample_clip[i]] in forget_ids].append(set(codes.tolist()))
    forget = np.array([sum(c in row for row in rows[True]) for c in range(NUM_CODES)])
    retain = np.array([sum(c in row for row in rows[False]) for c in range(NUM_CODES)])
    expected = select_codes(forget, retain, len(rows[True]), len(rows[False]), k=4)
    assert unlearning_record(read_model_config(out)).removed_codes[0] == expected


def test_lcr_is_deterministic_and_reuses_cached_statistics(model_dir, dataset, lcr_dir, tmp_path, capsys):
    out, cache = lcr_dir
    code, summary = run_cli(lcr_args(model_dir, dataset, tmp_path / "again", cache), capsys)
    assert code == 0 and summary["cache_hit"] is True
    assert Path(summary["cache_file"]).parent == cache and len(list(cache.glob("*.npz"))) == 1
    assert (tmp_path / "again" / "vq.safetensors").read_bytes() == (out / "vq.safetensors").read_bytes()
    # an uncached run encodes again and gets the same codes; another seed draws other crops and other noise
    code, fresh = run_cli(lcr_args(model_dir, dataset, tmp_path / "fresh", cache, "--no-cache"), capsys)
    assert code == 0 and fresh["cache_hit"] is False and fresh["cache_file"] is None
    assert fresh["removed_codes"] == summary["removed_codes"]
    assert (tmp_path / "fresh" / "vq.safetensors").read_bytes() == (out / "vq.safetensors").read_bytes()
    code, other = run_cli(lcr_args(model_dir, dataset, tmp_path / "seed1", cache, "--seed", "1"), capsys)
    assert code == 0 and other["cache_hit"] is False and len(list(cache.glob("*.npz"))) == 2
    assert (tmp_path / "seed1" / "vq.safetensors").read_bytes() != (out / "vq.safetensors").read_bytes()


def test_lcr_orthogonal_variant_on_two_layers_without_padding(model_dir, dataset, lcr_dir, tmp_path, capsys):
    _, cache = lcr_dir
    code, summary = run_cli(lcr_args(model_dir, dataset, tmp_path / "orth", cache, "--orth", "--alpha", "0.5",
                                     "--exclude-padding", "--layers", "0", "2"), capsys)
    assert code == 0 and summary["cache_hit"] is False  # other layers: another table
    before, after = load_model_dir(model_dir).vq, load_model_dir(tmp_path / "orth").vq
    for layer in (0, 2):
        removed = summary["removed_codes"][str(layer)]
        old, new = before.quantizer.layers[layer].codebook, after.quantizer.layers[layer].codebook
        assert torch.equal(new[removed], orthogonal_projection_vectors(old, removed, alpha=0.5))
        assert (old != new).any(dim=1).nonzero().flatten().tolist() == removed
        assert torch.equal(load_original_codebooks(tmp_path / "orth")[layer], old)
    assert torch.equal(before.quantizer.layers[1].codebook, after.quantizer.layers[1].codebook)
    record = unlearning_record(read_model_config(tmp_path / "orth"))
    assert record.settings["source_codes"] == {"0": None, "2": None} and record.settings["count_padding"] is False
    assert record.settings["layers"] == [0, 2]


@pytest.mark.skipif(not bf16_is_native(torch.device("cpu")), reason="this CPU would emulate bfloat16")
def test_bf16_statistics_get_their_own_cache_and_nearly_the_same_codes(model_dir, dataset, lcr_dir, tmp_path, capsys):
    out, cache = lcr_dir
    code, summary = run_cli(lcr_args(model_dir, dataset, tmp_path / "bf16", cache, "--precision", "bf16"), capsys)
    assert code == 0 and summary["cache_hit"] is False and len(list(cache.glob("*.npz"))) >= 2
    record = unlearning_record(read_model_config(tmp_path / "bf16"))
    assert record.settings["statistics_precision"] == "bf16"
    assert unlearning_record(read_model_config(out)).settings["statistics_precision"] == "fp32"
    models = load_model_dir(model_dir)
    fp32, _, hit32 = collect_codes(models, dataset, StatsSettings(repeats=3), cache, progress=False)
    bf16, _, hit16 = collect_codes(models, dataset, StatsSettings(repeats=3, precision="bf16"), cache, progress=False)
    assert hit32 and hit16 and np.array_equal(fp32.sample_crop, bf16.sample_crop)
    agreement = float((fp32.codes == bf16.codes).mean())
    print(f"\nbf16 vs fp32 encoder: {agreement:.4f} of the crop codes agree")
    assert agreement >= 0.95
    encoding = encoding_vq(models, "bf16", torch.device("cpu"))
    assert encoding.encoder_dtype == torch.bfloat16 and models.vq.encoder_dtype == torch.float32  # a copy


def test_statistics_precision_is_validated(model_dir):
    with pytest.raises(ValueError, match="precision is 'fp16'; choose one of"):
        StatsSettings(precision="fp16").validate(6)


def test_random_crop_follows_the_evaluation_crop():
    rng = np.random.default_rng(0)
    lengths = set()
    for _ in range(300):
        start, length = random_crop(57, 4, 196, rng)
        assert length % 4 == 0 and 0 <= start and start + length <= 57
        lengths.add(length)
    assert lengths == {56, 52}
    assert random_crop(199, 4, 120, rng)[1] == 120  # capped at max_motion_length


def test_each_sample_row_is_its_own_crop_encoded_alone(model_dir, dataset, tmp_path):
    """Distinct crops are encoded once and shared; every row must still equal its sample's crop encoded by itself."""
    models = load_model_dir(model_dir)
    settings = StatsSettings(repeats=6, batch_size=5)
    table, _, _ = collect_codes(models, dataset, settings, tmp_path, progress=False)
    rng, normalizer, row = np.random.default_rng(settings.seed), Normalizer(models.mean, models.std), 0
    for clip_id in table.clip_ids:
        motion = load_motion(dataset, clip_id)
        if not 40 <= len(motion) < 200:
            continue
        for start, end in caption_windows(dataset, clip_id, len(motion)):
            for _ in range(settings.repeats):
                offset, length = random_crop(end - start, 4, 196, rng)
                crop = np.zeros((1, 196, 263), np.float32)
                crop[0, :length] = normalizer.normalize(motion[start + offset:start + offset + length])
                with torch.inference_mode():
                    ids, _ = models.vq.encode(torch.from_numpy(crop))
                assert np.array_equal(table.codes[table.sample_crop[row], :, 0], ids[0, :, 0].numpy())
                assert table.lengths[table.sample_crop[row]] == length // 4
                row += 1
    assert row == len(table) and row > len(table.codes)  # samples did share crops


def test_code_table_presence_without_padding(model_dir, dataset, lcr_dir):
    _, cache = lcr_dir
    table, _, _ = collect_codes(load_model_dir(model_dir), dataset, StatsSettings(repeats=3), cache, progress=False)
    ids = frozenset(table.clip_ids)
    counts, n = table.presence(0, ids, NUM_CODES, count_padding=False)
    crops = table.sample_crop
    rows = [table.codes[crops[i], :table.lengths[crops[i]], 0] for i in range(len(table))]
    assert n == len(table) and np.array_equal(counts, code_presence(rows, NUM_CODES))


# ---------------------------------------------------------------------------------------------- bad inputs

def test_bad_inputs_fail_clearly_and_write_nothing(model_dir, dataset, lcr_dir, tmp_path, capsys):
    _, cache = lcr_dir
    out = tmp_path / "out"
    code, err = run_cli(lcr_args(model_dir, dataset, out, cache, "--concept", "dancing"), capsys)
    assert code == 2 and "unknown concept 'dancing'" in err
    code, err = run_cli(lcr_args(model_dir, dataset, out, cache, "--k", "65"), capsys)
    assert code == 2 and "larger than the codebook (64 codes)" in err
    code, err = run_cli(lcr_args(model_dir, dataset, out, cache, "--layers", "6"), capsys)
    assert code == 2 and "layers 0..5" in err

    empty = tmp_path / "empty"
    shutil.copytree(dataset, empty)
    (empty / "kw_splits" / "word_boundary" / "train_val-w-violence.txt").write_text("", encoding="utf-8")
    code, err = run_cli(lcr_args(model_dir, empty, out, cache), capsys)
    assert code == 2 and "forget split is empty" in err
    (empty / "kw_splits" / "word_boundary" / "train_val-w-violence.txt").write_text("000000\n", encoding="utf-8")
    code, err = run_cli(lcr_args(model_dir, empty, out, cache), capsys)
    assert code == 2 and "4 clip(s) of train_val.txt (e.g. 000002) are in neither split file" in err
    code, err = run_cli(lcr_args(model_dir, dataset, out, cache, "--source-code", "64"), capsys)
    assert code == 2 and "source code 64 is outside the codebook" in err
    code, err = run_cli(lcr_args(model_dir, dataset, out, cache, "--rule", "paper"), capsys)
    assert code == 2 and "safemotion data split" in err  # no paper-rule split files written

    torch.manual_seed(0)
    zero = save_model_dir(build_models(tiny_config()), tmp_path / "untrained")  # codebooks all zeros
    code, err = run_cli(lcr_args(zero, dataset, out, cache), capsys)
    assert code == 2 and "all zeros" in err

    lcr_out, _ = lcr_dir
    code, err = run_cli(lcr_args(lcr_out, dataset, out, cache), capsys)
    assert code == 2 and "already unlearned (lcr" in err
    code, err = run_cli(lcr_args(model_dir, dataset, lcr_out, cache), capsys)
    assert code == 2 and "already exists" in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folders left behind


# ---------------------------------------------------------------------------------------------- UCE / RECE

def _lstsq_weight(weight, forget, values_f, retain, values_r, s: CondEditSettings) -> np.ndarray:
    """argmin_W λ‖W − W0‖² + η Σ‖W c_f − v_f‖² + ρ Σ‖W c_r − v_r‖², as one stacked least-squares problem."""
    a = np.concatenate([np.sqrt(s.lam) * np.eye(weight.shape[1]), np.sqrt(s.eta) * forget, np.sqrt(s.rho) * retain])
    b = np.concatenate([np.sqrt(s.lam) * weight.T, np.sqrt(s.eta) * values_f, np.sqrt(s.rho) * values_r])
    return np.linalg.lstsq(a, b, rcond=None)[0].T


@pytest.mark.parametrize("bias_quirk", [False, True])
def test_uce_weight_solves_its_least_squares_problem(bias_quirk):
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(4, 6)), rng.normal(size=4)
    c_f, c_t, c_r = rng.normal(size=(3, 6)), rng.normal(size=6), rng.normal(size=(5, 6))
    settings = CondEditSettings(bias_quirk=bias_quirk)
    out_f, out_t = c_f @ w.T + b, c_t @ w.T + b
    unit = out_f / np.linalg.norm(out_f, axis=1, keepdims=True)
    values_f = out_t - (unit @ out_t)[:, None] * unit
    values_r = c_r @ w.T + b
    if not bias_quirk:
        values_f, values_r = values_f - b, values_r - b
    expected = _lstsq_weight(w, c_f, values_f, c_r, values_r, settings)
    t = lambda x: torch.from_numpy(x)  # noqa: E731
    got = uce_weight(t(w), t(b), t(c_f), t(c_t), t(c_r), settings).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-10)


def test_uce_without_the_quirk_keeps_retain_outputs_closer_than_with_it():
    rng = np.random.default_rng(2)
    w, b = torch.from_numpy(rng.normal(size=(8, 16))), torch.from_numpy(rng.normal(size=8) * 3)
    c_f, c_t, c_r = (torch.from_numpy(rng.normal(size=s)) for s in ((2, 16), (16,), (6, 16)))
    clean = uce_weight(w, b, c_f, c_t, c_r, CondEditSettings(rho=5.0))
    quirk = uce_weight(w, b, c_f, c_t, c_r, CondEditSettings(rho=5.0, bias_quirk=True))
    drift = lambda new: (c_r @ (new - w).T).norm()  # noqa: E731
    assert drift(clean) < 0.5 * drift(quirk)
    # the quirk fits the retain outputs W c + b with W alone: the drift points along +b
    assert float(((c_r @ (quirk - w).T) @ b).mean()) > 0


def test_rece_adversarial_matches_the_direct_formula():
    rng = np.random.default_rng(3)
    weights = [rng.normal(size=(4, 6)), rng.normal(size=(5, 6))]
    c_f = rng.normal(size=(3, 6))
    gram = sum(w.T @ w for w in weights)
    expected = (np.linalg.inv(1e-3 * np.eye(6) + gram) @ gram @ c_f.T).T
    got = rece_adversarial([torch.from_numpy(w) for w in weights], torch.from_numpy(c_f), 1e-3).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-8)


def test_uce_and_rece_edit_only_the_condition_projections(model_dir):
    models = load_model_dir(model_dir)
    g = torch.Generator().manual_seed(4)
    texts = CondTexts(torch.randn(9, TEXT_DIM, generator=g), torch.randn(TEXT_DIM, generator=g),
                      torch.randn(21, TEXT_DIM, generator=g))
    settings = CondEditSettings(epochs=2)
    for method in ("uce", "rece"):
        edited = edited_copy(models, texts, method, settings)
        for name in ("mask_transformer", "residual_transformer"):
            before, after = getattr(models, name).state_dict(), getattr(edited, name).state_dict()
            changed = [k for k in before if not torch.equal(before[k], after[k])]
            assert changed == ["cond_emb.weight"], (method, name, changed)
        assert edited.vq is models.vq
    # RECE = UCE, then per round: adversarial features of the current weights and a UCE step from them
    layers = [models.mask_transformer.cond_emb, models.residual_transformer.cond_emb]
    weights = [uce_weight(l.weight, l.bias, texts.forget, texts.target, texts.retain, settings) for l in layers]
    for _ in range(2):
        adversarial = rece_adversarial(weights, texts.forget, settings.gamma)
        weights = [uce_weight(w, l.bias, adversarial, texts.target, texts.retain, settings)
                   for w, l in zip(weights, layers)]
    rece = edited_copy(models, texts, "rece", settings)
    assert torch.allclose(rece.mask_transformer.cond_emb.weight, weights[0], atol=1e-6)
    assert torch.allclose(rece.residual_transformer.cond_emb.weight, weights[1], atol=1e-6)


def test_cond_edit_inputs_are_checked(model_dir, tmp_path, capsys):
    assert forget_words("violence") == ("kick", "punch", "hit", "beat", "boxe", "boxing", "jab", "uppercut", "hook")
    code, err = run_cli(["unlearn", "uce", "--model", str(model_dir), "--out", str(tmp_path / "x"),
                         "--concept", "dancing", "--device", "cpu"], capsys)
    assert code == 2 and "--forget-words" in err and not (tmp_path / "x").exists()
    code, err = run_cli(["unlearn", "rece", "--model", str(model_dir), "--out", str(tmp_path / "x"),
                         "--epochs", "0", "--device", "cpu"], capsys)
    assert code == 2 and "epochs must be at least 1" in err


# ---------------------------------------------------------------------------------------------- fine-tuning

def test_finetune_trains_the_mask_transformer_on_retain_clips(model_dir, dataset, tmp_path):
    out, work = tmp_path / "ft", tmp_path / "ft.training"
    # the training pipeline's text-feature cache, filled so the test needs no text encoder download
    captions = ["a person punches forward", "someone kicks high", "a person walks forward", "a person waves"]
    work.mkdir()
    torch.save({"captions": captions, "features": torch.randn(4, TEXT_DIM, generator=torch.Generator().manual_seed(0))},
               work / "text_features_minilm.pt")
    run_finetune(FinetuneOptions(model=model_dir, data=dataset, out=out, iters=2, batch_size=4, device="cpu",
                                 progress=False))
    record = unlearning_record(read_model_config(out))
    assert record.method == "finetune" and record.split_files["retain"]["path"] == \
        "kw_splits/word_boundary/train-wo-violence.txt"
    assert record.settings["iters"] == {"mask": 2} and record.settings["lr"] == 2e-5
    for name in ("vq", "residual_transformer", "length_estimator"):
        assert (out / f"{name}.safetensors").read_bytes() == (model_dir / f"{name}.safetensors").read_bytes()
    before, after = load_file(str(model_dir / "mask_transformer.safetensors")), load_file(
        str(out / "mask_transformer.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)


# ---------------------------------------------------------------------------------------------- calibration

def test_calibration_captions_and_scores(dataset, lcr_dir):
    positives, negatives = calibration_captions(dataset, "violence", "word_boundary", "val", 4, 49)
    # val = clips 8 (violent, 136 frames) and 9 (147 frames): explicit lines only on the forget side
    assert [(s.caption, s.tokens) for s in positives] == [("a person punches forward", 34), ("someone kicks high", 34)]
    assert [(s.caption, s.tokens) for s in negatives] == [("a person walks forward", 36), ("a person waves", 11)]
    models = load_model_dir(lcr_dir[0])
    features = torch.randn(3, TEXT_DIM, generator=torch.Generator().manual_seed(0))
    sampling = SamplingConfig(time_steps=3)
    scores = hit_ratio_scores(models, features, [5, 12, 7], [0, 1, 2], sampling)
    again = hit_ratio_scores(models, features, [5, 12, 7], [0, 1, 2], sampling, batch_size=1)
    assert np.array_equal(scores, again) and ((scores >= 0) & (scores <= 1)).all()
    assert all(round(s * n) == s * n for s, n in zip(scores, [5, 12, 7]))  # whole numbers of hit tokens


def test_audit_threshold_is_calibrated_on_real_clips_and_used_by_audits(dataset, lcr_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(lcr_dir[0], model)
    update_config_section(model, "safety", SafetySettings(threshold=0.5, calibrated=True).to_dict())
    calibration = run_audit_calibration(CalibrationOptions(model=model, data=dataset, split="train_val",
                                                           device="cpu"))
    models = load_model_dir(model)
    safety = safety_settings(models.config)
    assert safety.audit_threshold == calibration.threshold and safety.audit_calibration["split"] == "train_val"
    assert (safety.threshold, safety.calibrated) == (0.5, True)  # the generation threshold is left alone
    # the scores by hand: whole clips encoded with the original codebooks
    removed = unlearning_record(models.config).removed_codes[0]
    original = original_codebook_models(models, model)
    split = load_concept_split(dataset, "violence", "word_boundary", "train_val")
    scores = [[float(np.isin(encode_features(original, load_motion(dataset, c))[:, 0], removed).mean())
               for c in sorted(ids)] for ids in (split.forget_ids, split.retain_ids)]
    assert calibration.threshold == calibrate_threshold(*scores).threshold
    assert (calibration.n_positive, calibration.n_negative) == (5, 5)
    clip = sorted(split.forget_ids)[0]
    report = audit_joints(models, original, recover_from_ric(load_motion(dataset, clip)))
    assert (report.threshold, report.calibrated) == (calibration.threshold, True)
    assert report.flagged == (report.hit_ratio >= calibration.threshold)
    assert cli.main(["unlearn", "calibrate", "--audit", "--model", str(model), "--data", str(dataset), "--split",
                     "train_val", "--max-fpr", "0", "--dry-run", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["threshold_of"] == "audit" and printed["criterion"] == "max_fpr=0" and not printed["written"]
    assert safety_settings(load_model_dir(model).config).audit_threshold == calibration.threshold  # dry run
    with pytest.raises(ValueError, match="audit_threshold must be in"):
        SafetySettings.from_dict({"threshold": 0.5, "audit_threshold": 1.5})


def test_calibrated_threshold_is_stored_and_used_by_review(lcr_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(lcr_dir[0], model)
    update_config_section(model, "safety", SafetySettings(threshold=0.5, calibrated=True).to_dict())
    models = load_model_dir(model)
    removed = unlearning_record(models.config).removed_codes[0]
    safe_code = next(c for c in range(NUM_CODES) if c not in removed)
    tokens = [np.array([removed[0]] * 2 + [safe_code] * 2), np.array([removed[0]] + [safe_code] * 3)]
    records = review(models, tokens, "block")
    assert [r.decision for r in records] == ["blocked", "pass"] and records[0].calibrated
    assert [r.hit_ratio for r in records] == [0.5, 0.25] and records[0].spans == [(0, 8)]
    assert review(load_model_dir(lcr_dir[0]), tokens)[0].threshold == 0.2  # uncalibrated default
    assert ORIGINAL_CODEBOOKS_FILE in {p.name for p in model.iterdir()}
