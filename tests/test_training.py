"""Training: dataset reader and samplers, each stage on a tiny synthetic HumanML3D-layout dataset, overfitting,
exact resume, and the `safemotion train` command end to end."""

from __future__ import annotations

import dataclasses
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from safemotion import cli
from safemotion.data.motion_dataset import (
    CaptionIndex,
    TokenSampler,
    WindowSampler,
    label_balance,
    load_caption_samples,
    load_motion,
    phase_crop,
    read_captions,
    read_clip_labels,
    read_split,
)
from safemotion.eval.reconstruction import reconstruct
from safemotion.generate import GenerationRequest, Generator
from safemotion.models.config import LengthEstimatorConfig, ModelConfig, TransformerConfig, VQConfig
from safemotion.models.model_dir import build_models, check_model_dir, load_model_dir
from safemotion.motion.features import recover_from_ric
from safemotion.motion.normalization import compute_mean_std
from safemotion.train import TrainOptions, run_stage, train
from safemotion.train.loop import Recipe, load_checkpoint
from safemotion.train.pipeline import _stage_lock, build_stage

CAPTIONS = ["a person walks forward", "someone jumps up", "a man waves his hand", "a person turns around"]
NUM_TOKENS = 32


def tiny_config() -> ModelConfig:
    transformer = TransformerConfig(latent_dim=16, ff_size=32, num_layers=1, num_heads=2, text_dim=384,
                                    num_tokens=NUM_TOKENS, code_dim=16)
    return ModelConfig(
        vq=VQConfig(nb_code=NUM_TOKENS, code_dim=16, width=16, depth=1),
        mask_transformer=transformer,
        residual_transformer=dataclasses.replace(transformer, cond_drop_prob=0.2),
        length_estimator=LengthEstimatorConfig(text_dim=384, hidden_dim=32),
        text_encoder="minilm",
    )


def write_dataset(root: Path, frames: list[int], seed: int = 0) -> Path:
    """A HumanML3D-layout dataset of smooth random features, two captions per clip (one on a sub-clip)."""
    rng = np.random.default_rng(seed)
    (root / "new_joint_vecs").mkdir(parents=True)
    (root / "texts").mkdir()
    ids, motions = [], []
    for i, count in enumerate(frames):
        clip_id = f"{i:06d}"
        motion = np.cumsum(rng.normal(scale=0.1, size=(count, 263)), axis=0).astype(np.float32)
        np.save(root / "new_joint_vecs" / f"{clip_id}.npy", motion)
        lines = [f"{CAPTIONS[i % 4]}#a/DET person/NOUN#0.0#0.0", f"{CAPTIONS[(i + 1) % 4]} slowly#x/X#0.5#2.75"]
        (root / "texts" / f"{clip_id}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        ids.append(clip_id)
        motions.append(motion)
    mean, std = compute_mean_std(motions)
    np.save(root / "Mean.npy", mean)
    np.save(root / "Std.npy", std)
    for split in ("train", "val", "test"):
        (root / f"{split}.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    return root


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    # 30 frames is too short for the caption filter (40 ≤ frames < 200) but feeds the VQ windows.
    return write_dataset(tmp_path_factory.mktemp("data") / "tiny", [30, 64, 80, 100, 57, 120])


def options(data: Path, out: Path, **overrides) -> TrainOptions:
    settings = dict(data=data, out=out, config=tiny_config(), iters=4, batch_size=4, lr=1e-3, warmup_iters=2,
                    window_size=32, device="cpu", progress=False, checkpoint_every=2, val_split=None)
    settings.update(overrides)
    return TrainOptions(**settings)


# ---------------------------------------------------------------------------------------------- dataset

def test_caption_samples_follow_the_length_filter_and_sub_clips(dataset):
    samples = load_caption_samples(dataset, "train")
    names = sorted(s.name for s in samples)
    # clip 0 (30 frames) is dropped entirely; every other clip is kept whole; sub-clips 0.5-2.75 s are 45 frames
    assert names == sorted([f"{i:06d}" for i in range(1, 6)] + [f"{i:06d}#1" for i in range(1, 6)])
    sub = next(s for s in samples if s.name == "000003#1")
    whole = np.load(dataset / "new_joint_vecs" / "000003.npy")
    assert np.array_equal(sub.motion, whole[10:55]) and sub.captions == ["a person walks forward slowly"]


def test_malformed_caption_lines_name_file_and_line(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("a person walks#a/DET#0.0#0.0\nbroken line#0.0\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"x\.txt:2: expected 'caption#tokens#start#end'"):
        read_captions(path)


def test_window_sampler_draws_whole_windows(dataset):
    motions = [np.load(p) for p in sorted((dataset / "new_joint_vecs").glob("*.npy"))]
    sampler = WindowSampler(motions, 32)
    assert len(sampler) == sum(max(len(m) - 31, 0) for m in motions)  # the 30-frame clip is too short
    batch = sampler.sample(np.random.default_rng(0), 16)
    assert batch.shape == (16, 32, 263)
    for window in batch:  # every window is a contiguous slice of some clip
        assert any(np.array_equal(window, m[s:s + 32]) for m in motions for s in range(len(m) - 31))


def test_token_sampler_crops_match_the_encoded_phases():
    frames = [45, 81]
    # in place of code ids, each token holds the first frame it covers, so crops can be checked exactly
    phase_ids = [[np.arange(f)[phase_crop(f, p)][::4, None].repeat(2, 1) for p in range(4)] for f in frames]
    sampler = TokenSampler(frames, phase_ids, CaptionIndex([["a"], ["b", "c"]]), max_tokens=49)
    batch = sampler.sample(np.random.default_rng(1), 200)
    assert batch.ids.shape == (200, 49, 2)
    for ids, length, caption in zip(batch.ids, batch.lengths, batch.captions):
        sample = 0 if caption == 0 else 1
        assert length in (frames[sample] // 4, frames[sample] // 4 - 1)
        first = ids[0, 0]
        assert np.array_equal(ids[:length, 0], first + 4 * np.arange(length))  # consecutive frames of one crop
        assert first + 4 * length <= frames[sample]
        assert (ids[length:] == 0).all()
    assert set(batch.lengths.tolist()) == {11, 10, 20, 19}


# ---------------------------------------------------------------------------------------------- stages

def test_weighted_caption_index_draws_in_proportion():
    index = CaptionIndex([["a"], ["b"], ["c"]], weights=label_balance(["walk", "walk", "bow"], power=1.0))
    rng = np.random.default_rng(0)
    drawn = np.bincount([index.draw(rng)[0] for _ in range(6000)], minlength=3) / 6000
    assert drawn == pytest.approx([0.25, 0.25, 0.5], abs=0.02)  # each label drawn equally often
    assert label_balance(["walk", "walk", "bow"], power=0.0).tolist() == [1.0, 1.0, 1.0]
    assert label_balance(["walk"] * 4 + ["bow"], power=0.5).tolist() == [0.5] * 4 + [1.0]
    with pytest.raises(ValueError, match="must lie in"):
        label_balance(["walk"], power=1.5)
    with pytest.raises(ValueError, match="3 finite non-negative"):
        CaptionIndex([["a"], ["b"], ["c"]], weights=np.array([1.0, np.nan, 1.0]))


def test_balanced_training_reads_the_labels_of_index_csv(dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    run_stage("vq", options(data, tmp_path / "model"))
    (data / "index.csv").write_text("id,source,take,start_frame,end_frame\n000001,user,a,0,64\n")
    with pytest.raises(ValueError, match="no 'labels' column"):
        run_stage("mask", options(data, tmp_path / "model", balance=0.5))
    rows = "".join(f"{i:06d},user,t{i},0,1,{'bow' if i == 5 else 'walk'};style:{i}\n" for i in range(6))
    (data / "index.csv").write_text("id,source,take,start_frame,end_frame,labels\n" + rows)
    assert read_clip_labels(data)["M000005"] == "bow;style:5"
    mask = build_stage("mask", load_model_dir(tmp_path / "model"), options(data, tmp_path / "model", balance=1.0),
                       torch.device("cpu"))
    weights = np.diff(mask.tokens.index.cumulative, prepend=0.0)  # grouped by content, not by content and style
    bow = [i for i, s in enumerate(load_caption_samples(data, "train")) if s.name.startswith("000005")]
    assert weights[bow].sum() == pytest.approx(0.5)
    result = run_stage("mask", options(data, tmp_path / "model", balance=0.5))
    assert result.iterations == 4 and all(np.isfinite(result.losses))
    record = json.loads((tmp_path / "model.training" / "stages.json").read_text())
    assert record["mask"]["balance"] == 0.5 and record["vq"]["balance"] == 0.0


def test_each_stage_trains_into_the_model_directory(dataset, tmp_path):
    out = tmp_path / "model"
    for stage in ("vq", "mask", "residual", "length"):
        result = run_stage(stage, options(dataset, out, config=tiny_config() if stage == "vq" else None))
        assert result.iterations == 4 and len(result.losses) == 4
        assert all(np.isfinite(result.losses))
        check_model_dir(out)
        record = json.loads((tmp_path / "model.training" / "stages.json").read_text())
        assert record[stage]["iterations"] == 4
    card = (out / "MODEL_CARD.md").read_text()
    assert "`length`: 4 iterations" in card and "Not trained yet" not in card
    # the text features were encoded once and cached
    cache = torch.load(tmp_path / "model.training" / "text_features_minilm.pt", weights_only=True)
    assert cache["features"].shape == (8, 384)


def test_stages_trained_in_parallel_keep_each_others_weights(dataset, tmp_path):
    out = tmp_path / "model"
    run_stage("vq", options(dataset, out))
    with ThreadPoolExecutor(2) as pool:
        for job in [pool.submit(run_stage, stage, options(dataset, out, config=None)) for stage in ("mask", "residual")]:
            job.result()
    models = load_model_dir(out)
    work = tmp_path / "model.training"
    for stage, module in (("mask", models.mask_transformer), ("residual", models.residual_transformer)):
        final = load_checkpoint(work / f"{stage}.ckpt", stage)["model"]
        for name, tensor in module.state_dict().items():
            torch.testing.assert_close(tensor, final[name].to(tensor.dtype), msg=f"{stage}: {name}")
    assert {"vq", "mask", "residual"} <= set(json.loads((work / "stages.json").read_text()))
    assert not (work / ".lock").exists()


def test_from_scratch_retrains_a_stage_on_fresh_weights_and_keeps_the_vq(dataset, tmp_path):
    out = tmp_path / "model"
    run_stage("vq", options(dataset, out))
    run_stage("mask", options(dataset, out, config=None))
    trained = load_model_dir(out)
    results = {}
    for name, scratch in (("a", True), ("b", True), ("continued", False)):
        copy = tmp_path / name
        shutil.copytree(out, copy)
        run_stage("mask", options(dataset, copy, config=None, from_scratch=scratch))
        results[name] = load_model_dir(copy)
    weights = {k: m.mask_transformer.state_dict() for k, m in results.items()}
    for key, tensor in weights["a"].items():
        torch.testing.assert_close(tensor, weights["b"][key], msg=key)  # fresh start, same seed: same result
    changed = [k for k, t in weights["a"].items() if not torch.equal(t, weights["continued"][k])]
    assert len(changed) > len(weights["a"]) // 2  # continuing from the trained weights ends elsewhere
    for key, tensor in trained.vq.state_dict().items():
        assert torch.equal(tensor, results["a"].vq.state_dict()[key]), key
    # the copies' work folders saw only the mask stage; the card must not call the copied VQ untrained
    card = (tmp_path / "continued" / "MODEL_CARD.md").read_text()
    assert "Not trained yet" not in card
    assert "Not trained in this work folder (weights as the model directory had them): vq, residual, length" in card
    assert "Not trained yet (freshly initialised weights): residual, length" in (out / "MODEL_CARD.md").read_text()
    with pytest.raises(ValueError, match="--from-scratch applies to mask, residual and length"):
        run_stage("vq", options(dataset, tmp_path / "a", config=None, from_scratch=True))


def test_mask_stage_from_scratch_with_another_backbone(dataset, tmp_path):
    out = tmp_path / "model"
    run_stage("vq", options(dataset, out))
    run_stage("residual", options(dataset, out, config=None))
    before = load_model_dir(out)
    run_stage("mask", options(dataset, out, config=None, from_scratch=True, backbone="serpent", ssm_state=4,
                              ssm_expand=1))
    after = load_model_dir(out)
    mask = after.config.mask_transformer
    assert (mask.backbone, mask.ssm_state, mask.ssm_expand) == ("serpent", 4, 1)
    assert after.mask_transformer.seqTransEncoder.layers[0].mixer.branches[0].ssm.forward_ssm.A_log.shape[1] == 4
    assert after.config.residual_transformer == before.config.residual_transformer
    for key, tensor in before.residual_transformer.state_dict().items():
        assert torch.equal(tensor, after.residual_transformer.state_dict()[key]), key
    motions = Generator(after, None, device="cpu").generate_from_features(
        torch.zeros(1, 384), seeds=[0], token_lengths=[3], smpl=False)
    assert motions[0].features.shape == (12, 263)
    with pytest.raises(ValueError, match="--backbone, --ssm-state and --ssm-expand apply to the mask stage"):
        run_stage("residual", options(dataset, out, config=None, from_scratch=True, backbone="mamba"))
    with pytest.raises(ValueError, match="backbone 'lstm' is not supported"):
        run_stage("mask", options(dataset, out, config=None, from_scratch=True, backbone="lstm"))


def test_a_stale_stage_lock_gives_a_clear_error(tmp_path):
    (tmp_path / ".lock").touch()
    with pytest.raises(TimeoutError, match="delete the file and rerun with --resume"):
        with _stage_lock(tmp_path, poll_seconds=0.01, timeout=0.05):
            pass
    assert (tmp_path / ".lock").exists()  # someone else's lock is never removed


def _mean(values):
    return float(np.mean(values))


@pytest.mark.parametrize("stage_name", ["vq", "mask", "residual", "length"])
def test_loss_decreases_when_overfitting_one_clip(tmp_path, stage_name):
    data = write_dataset(tmp_path / "one", [48], seed=3)
    torch.manual_seed(0)
    models = build_models(tiny_config())
    opts = options(data, tmp_path / "m", window_size=48)
    if stage_name != "vq":  # the transformers need a VQ with usable codes: a short VQ fit first
        vq_stage = build_stage("vq", models, opts, torch.device("cpu"))
        train(vq_stage, Recipe(iters=30, batch_size=4, lr=2e-3, weight_decay=0, warmup_iters=0),
              tmp_path / "vq.ckpt", progress=False)
    stage = build_stage(stage_name, models, opts, torch.device("cpu"))
    recipe = Recipe(iters=60, batch_size=8, lr=3e-3, weight_decay=0.0, warmup_iters=0)
    losses = train(stage, recipe, tmp_path / "stage.ckpt", progress=False).losses
    assert _mean(losses[-10:]) < 0.7 * _mean(losses[:5]), (losses[:5], losses[-10:])


@pytest.mark.parametrize("stage_name", ["vq", "mask", "residual", "length"])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(dataset, tmp_path, stage_name):
    if stage_name == "vq":
        base = None
    else:  # both runs start from the same trained VQ
        base = tmp_path / "base"
        run_stage("vq", options(dataset, base))

    def model_dir(name: str) -> Path:
        out = tmp_path / name
        if base is not None:
            shutil.copytree(base, out)
        return out

    config = None if base else tiny_config()
    straight = model_dir("straight")
    full = run_stage(stage_name, options(dataset, straight, iters=6, config=config, val_split="val"))
    assert [v["iteration"] for v in full.validation] == [2, 4, 6]

    resumed = model_dir("resumed")
    first = run_stage(stage_name, options(dataset, resumed, iters=6, stop_at=3, config=config, val_split="val"))
    assert first.iterations == 3
    checkpoint = load_checkpoint(tmp_path / "resumed.training" / f"{stage_name}.ckpt", stage_name)
    assert checkpoint["iteration"] == 3 and [v["iteration"] for v in checkpoint["validation"]] == [2, 3]
    second = run_stage(stage_name, options(dataset, resumed, iters=6, resume=True, config=None, val_split="val"))
    assert second.iterations == 6 and len(second.losses) == 3
    assert [v["iteration"] for v in second.validation] == [2, 3, 4, 6]  # the history carries over

    component = {"vq": "vq", "mask": "mask_transformer", "residual": "residual_transformer",
                 "length": "length_estimator"}[stage_name]
    a = getattr(load_model_dir(straight), component).state_dict()
    b = getattr(load_model_dir(resumed), component).state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # Same weights, so the same validation losses where both runs validated; they are recorded per stage.
    assert {v["iteration"]: v["loss"] for v in full.validation} == {
        v["iteration"]: v["loss"] for v in second.validation if v["iteration"] != 3
    }
    record = json.loads((tmp_path / "resumed.training" / "stages.json").read_text())
    assert record[stage_name]["validation"] == second.validation
    assert "validation loss" in (resumed / "MODEL_CARD.md").read_text()


@pytest.mark.parametrize("stage_name", ["vq", "mask"])
def test_validation_leaves_the_training_untouched(dataset, tmp_path, stage_name):
    base = None if stage_name == "vq" else tmp_path / "base"
    if base is not None:
        run_stage("vq", options(dataset, base))
    outs = {}
    for name, every in (("plain", None), ("validated", 1)):
        out = tmp_path / name
        if base is not None:
            shutil.copytree(base, out)
        val_split = None if every is None else "val"
        run_stage(stage_name, options(dataset, out, iters=4, config=None if base else tiny_config(),
                                      val_split=val_split, validate_every=every or 0))
        outs[name] = getattr(load_model_dir(out), "vq" if stage_name == "vq" else "mask_transformer").state_dict()
    for key in outs["plain"]:
        assert torch.equal(outs["plain"][key], outs["validated"][key]), key


def test_recipe_warm_up_and_milestones():
    recipe = Recipe(iters=100, batch_size=1, lr=1.0, weight_decay=0, warmup_iters=4, milestones=(10, 20), gamma=0.5)
    assert [recipe.lr_factor(i) for i in range(5)] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert recipe.lr_factor(9) == 1.0 and recipe.lr_factor(10) == 0.5 and recipe.lr_factor(25) == 0.25


def test_later_stages_need_the_vq_first_and_resume_needs_a_checkpoint(dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="train the 'vq' stage into it first"):
        run_stage("mask", options(dataset, tmp_path / "none", config=None))
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        run_stage("vq", options(dataset, tmp_path / "fresh", resume=True))


# ---------------------------------------------------------------------------------------------- CLI

def test_cli_train_all_stages_then_generate(dataset, tmp_path, capsys):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config().to_dict()), encoding="utf-8")
    out = tmp_path / "cli-model"
    common = ["--data", str(dataset), "--out", str(out), "--iters", "3", "--batch-size", "4", "--warmup-iters", "1",
              "--window-size", "32", "--device", "cpu", "--no-progress"]
    for stage in ("vq", "mask", "residual", "length"):
        assert cli.main(["train", stage, *(["--config", str(config)] if stage == "vq" else []), *common]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["stage"] == stage and summary["iterations"] == 3

    assert cli.main(["train", "mask", "--config", str(config), *common]) == 2
    assert "only apply to the 'vq' stage" in capsys.readouterr().err

    motion = Generator.from_dir(out).generate([GenerationRequest("a person walks forward", seconds=2.0)])[0]
    assert motion.joints.shape == (40, 22, 3) and np.isfinite(motion.joints).all()

    lengths = [len(load_motion(dataset, clip_id)) // 4 * 4 for clip_id in read_split(dataset, "test")]
    assert cli.main(["eval-vq", "--model", str(out), "--data", str(dataset), "--split", "test"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["clips"] == len(lengths) and report["frames"] == sum(lengths)
    features = load_motion(dataset, report["worst_clip"])
    recon = recover_from_ric(reconstruct(load_model_dir(out), features))
    original = recover_from_ric(features[:len(recon)])
    worst = np.linalg.norm((recon - recon[:, :1]) - (original - original[:, :1]), axis=-1).mean()
    assert report["worst_clip_mpjpe_m"] == pytest.approx(worst, rel=1e-5)
    assert 0 < report["clip_mpjpe_median_m"] <= report["worst_clip_mpjpe_m"]
    assert report["global_mpjpe_m"] >= 0


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("damage, message", [
    (lambda path: np.save(path, np.array({"rotation": 1}, dtype=object), allow_pickle=True),
     "not a plain numeric .npy array .*pickled objects are never loaded"),
    (lambda path: np.save(path, np.full((64, 263), np.nan, dtype=np.float32)), "contains NaN or infinite values"),
    (lambda path: np.save(path, np.zeros((64, 200), dtype=np.float32)), r"expected features \[T, 263\]"),
    (lambda path: np.save(path, np.array(["walk"] * 64)), "holds <U4 values, expected a numeric array"),
    (lambda path: path.write_bytes(b"\x93NUMPY garbage"), "not a plain numeric .npy array"),
])
def test_bad_feature_files_name_the_file_and_leave_the_model_as_it_was(dataset, tmp_path, damage, message):
    model = tmp_path / "model"
    run_stage("vq", options(dataset, model))
    before = _files(model)
    bad = tmp_path / "bad"
    shutil.copytree(dataset, bad)
    damage(bad / "new_joint_vecs" / "000001.npy")
    for stage in ("vq", "mask"):
        with pytest.raises(ValueError, match=r"000001\.npy: " + message):
            run_stage(stage, options(bad, model, config=None, resume=False, work=tmp_path / f"work-{stage}"))
    assert _files(model) == before


def test_a_diverging_run_stops_and_leaves_the_model_and_checkpoint_as_they_were(dataset, tmp_path):
    model = tmp_path / "model"
    run_stage("vq", options(dataset, model))
    run_stage("mask", options(dataset, model, config=None, iters=2))
    before, checkpoint = _files(model), (tmp_path / "model.training" / "mask.ckpt").read_bytes()
    with pytest.raises(FloatingPointError, match="mask: the loss is (nan|inf) at iteration [2-9]"):
        run_stage("mask", options(dataset, model, config=None, iters=8, lr=1e30, checkpoint_every=100))
    assert _files(model) == before
    assert (tmp_path / "model.training" / "mask.ckpt").read_bytes() == checkpoint
