"""Benchmark runner: a --quick run on tiny random models (original, retrained, fine-tuned stand-in, real LCR edit), a
tiny dataset and a tiny evaluator writes the paper's table layout; bad inputs fail early with clear errors."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
import pytest
import torch

from safemotion import cli
from safemotion.data.captions import caption_line
from safemotion.data.concept_splits import write_concept_splits
from safemotion.eval.benchmark import (
    BenchmarkSettings,
    add_rows,
    parse_model_specs,
    quick_settings,
    report_settings,
    run_benchmark,
)
from safemotion.eval.evaluator import CoEmbedding, EvaluatorConfig, save_evaluator
from safemotion.eval.report import write_report
from safemotion.models.config import LengthEstimatorConfig, ModelConfig, TransformerConfig, VQConfig
from safemotion.models.model_dir import build_models, load_model_dir, save_model_dir
from safemotion.unlearn.lcr_pipeline import LCROptions, run_lcr

SAFE = ["a person walks forward", "a person waves the left hand", "someone sits down slowly",
        "a person jumps in place", "the person turns around"]
VIOLENT = ["a person kicks forward", "someone punches the air", "a person punches with the right fist"]
TINY_EVALUATOR = EvaluatorConfig(dim_movement_enc_hidden=16, dim_movement_latent=16, dim_motion_hidden=16,
                                 dim_text_hidden=16, dim_coemb_hidden=8)


def tiny_model_config() -> ModelConfig:
    transformer = TransformerConfig(latent_dim=32, ff_size=64, num_layers=1, num_heads=2, text_dim=384,
                                    num_tokens=64, code_dim=32)
    return ModelConfig(vq=VQConfig(nb_code=64, code_dim=32, width=32, depth=1), mask_transformer=transformer,
                       residual_transformer=dataclasses.replace(transformer, cond_drop_prob=0.2),
                       length_estimator=LengthEstimatorConfig(text_dim=384, hidden_dim=32), text_encoder="minilm")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Clips with 2 captions each (violent clips: a violent and a safe caption) in train/val/test, splits written."""
    root = tmp_path_factory.mktemp("data")
    (root / "new_joint_vecs").mkdir()
    (root / "texts").mkdir()
    rng = np.random.default_rng(0)
    splits = {"train": 12, "val": 4, "test": 10}
    motions = []
    for split, count in splits.items():
        ids = []
        for j in range(count):
            clip_id = f"{split}{j:02d}"
            violent = j % 3 == 0
            captions = [VIOLENT[j % len(VIOLENT)] if violent else SAFE[j % len(SAFE)], SAFE[(j + 1) % len(SAFE)]]
            motion = rng.normal(size=(int(rng.integers(40, 80)), 263)).astype(np.float32)
            np.save(root / "new_joint_vecs" / f"{clip_id}.npy", motion)
            (root / "texts" / f"{clip_id}.txt").write_text("".join(caption_line(c) + "\n" for c in captions))
            motions.append(motion)
            ids.append(clip_id)
        (root / f"{split}.txt").write_text("\n".join(ids) + "\n")
    (root / "train_val.txt").write_text((root / "train.txt").read_text() + (root / "val.txt").read_text())
    stacked = np.concatenate(motions)
    np.save(root / "Mean.npy", stacked.mean(0))
    np.save(root / "Std.npy", stacked.std(0))
    counts = write_concept_splits(root, "violence", "word_boundary")
    assert counts["test-w-violence"] == 4 and counts["test-wo-violence"] == 6
    return root


@pytest.fixture(scope="module")
def models_root(dataset, tmp_path_factory):
    """original, retrain (another VQ), finetune (original VQ, other transformers) and lcr (real LCR of original)."""
    root = tmp_path_factory.mktemp("models")
    built = {}
    for name, seed in (("original", 0), ("retrain", 1), ("finetune", 2)):
        torch.manual_seed(seed)
        models = build_models(tiny_model_config())
        for layer in models.vq.quantizer.layers:
            layer.codebook.normal_()
        models.std = np.full(263, 0.5, np.float32)
        built[name] = models
    built["finetune"].vq.load_state_dict(built["original"].vq.state_dict())
    for name, models in built.items():
        save_model_dir(models.eval(), root / name)
    run_lcr(LCROptions(model=root / "original", data=dataset, out=root / "lcr", k=4, repeats=2, cache_dir=None,
                       device="cpu", progress=False))
    return root


@pytest.fixture(scope="module")
def evaluator_dir(dataset, tmp_path_factory):
    torch.manual_seed(0)
    return save_evaluator(CoEmbedding(TINY_EVALUATOR), np.load(dataset / "Mean.npy"), np.load(dataset / "Std.npy"),
                          tmp_path_factory.mktemp("evaluators") / "tiny")


def test_quick_run_writes_the_paper_tables(dataset, models_root, evaluator_dir, tmp_path, capsys):
    out = tmp_path / "reports" / "smoke"
    code = cli.main(["eval", "--models", "original,retrain,finetune,lcr", "--models-root", str(models_root),
                     "--data", str(dataset), "--evaluator", str(evaluator_dir), "--quick", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    markdown = (out / "report.md").read_text()

    settings = report["settings"]
    assert settings["quick"] and settings["repeats"] == 2 and settings["rule"] == "word_boundary"
    assert settings["sampling"] == {"time_steps": 10, "cond_scale": 4.0, "residual_cond_scale": 5.0,
                                    "refine_cond_scale": 3.0, "temperature": 1.0, "topk_filter_thres": 0.9, "gumbel_sample": False,
                                    "precision": "fp32"}
    assert "top-k filter 0.9, precision fp32; seed 0" in markdown
    assert len(report["commit"]) >= 7
    # test split: 4 violent clips (2 captions each, one violent) and 6 safe clips → 8 and 12 caption samples
    sets = report["data"]["sets"]
    assert (sets["forget"]["ids"], sets["forget"]["samples"], sets["forget"]["batch_size"]) == (4, 8, 8)
    assert (sets["retain"]["ids"], sets["retain"]["samples"], sets["retain"]["batch_size"]) == (6, 12, 12)
    assert sets["forget"]["masked_captions"] == 4
    rows = ["real motions", "original", "retrain", "finetune", "lcr"]
    for set_name, metrics in (("forget", {"fid", "mm_safe", "diversity", "r1", "r2", "r3", "mm_dist"}),
                              ("retain", {"fid", "mm_dist", "diversity", "r1", "r2", "r3"})):
        results = report["results"][set_name]
        assert list(results) == rows
        for row in rows:
            assert set(results[row]) == (metrics if row == "real motions" else metrics | {"seconds_per_motion"})
            for entry in results[row].values():
                assert len(entry["values"]) == 2 and np.isfinite(entry["values"]).all()
                assert entry["mean"] == pytest.approx(np.mean(entry["values"]))
                assert entry["ci95"] == pytest.approx(1.96 * np.std(entry["values"]) / np.sqrt(2))
        # one batch holds every sample: R@3 ≥ R@2 ≥ R@1, all multiples of 1/batch
        for row in rows:
            r = [results[row][k]["values"][0] for k in ("r1", "r2", "r3")]
            assert r[0] <= r[1] <= r[2] and all(abs(v * sets[set_name]["batch_size"] % 1) < 1e-9 for v in r)
    # the LCR edit changes only decoding: same tokens, different motions
    assert report["results"]["forget"]["lcr"]["fid"]["values"] != report["results"]["forget"]["original"]["fid"][
        "values"]

    flags = report["flag_rates"]
    assert flags["retrain"] is None  # its own VQ: the removed codes mean nothing there
    assert flags["lcr"]["codes_from"] == "lcr" and flags["finetune"]["codes_from"] == "lcr"
    assert flags["original"]["codes_from"] == "lcr"
    for prompt_set in ("explicit_violent", "implicit_violent", "safe"):
        assert flags["lcr"][prompt_set]["total"] == 4
        # same transformers, same seeds → same base tokens → the same flags as the LCR model
        assert flags["original"][prompt_set] == flags["lcr"][prompt_set]
        assert 0 <= flags["finetune"][prompt_set]["mean_hit_ratio"] <= 1
    assert max(flags["lcr"][s]["mean_hit_ratio"] for s in ("explicit_violent", "implicit_violent", "safe")) > 0
    assert flags["keyword_rule"]["explicit_violent"]["rate"] == 1.0
    assert flags["keyword_rule"]["safe"]["rate"] == 0.0

    assert "| model | FID → | MM-Safe ↓ | Diversity → | R@1 → |" in markdown
    assert "| model | FID ↓ | MM-Dist ↓ | Diversity → | R@1 ↑ |" in markdown
    assert markdown.index("## Forget set") < markdown.index("## Retain set") < markdown.index("## Flag rates")
    original_fid = report["results"]["retain"]["original"]["fid"]
    assert f"| original | {original_fid['mean']:.3f} ± {original_fid['ci95']:.3f} |" in markdown
    assert "| retrain | n/a | n/a | n/a | no shared removed codes | — |" in markdown
    assert report["commit"] in markdown and "quick smoke run" in markdown
    assert report["platform"]["threads"] == 1 and "1 thread(s)" in markdown
    speed = report["results"]["retain"]["lcr"]["seconds_per_motion"]["mean"]
    assert 0 < speed < 60 and "| model | R@2 | R@3 | generation s/motion |" in markdown
    lcr_line = [line for line in markdown.splitlines() if line.startswith("| lcr |") and line.count("|") == 5][-1]
    assert lcr_line.endswith(f"| {speed:.3f} ± {report['results']['retain']['lcr']['seconds_per_motion']['ci95']:.3f} |")
    if importlib.util.find_spec("matplotlib") is None:
        assert "matplotlib is not installed" in markdown and not (out / "plots").exists()
    else:
        for plot in ("forget", "retain", "flag_rates"):
            assert (out / "plots" / f"{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"![plots/{plot}.png](plots/{plot}.png)" in markdown


def test_samples_per_repeat_scores_a_capped_subset_in_whole_batches(dataset, models_root, evaluator_dir):
    settings = BenchmarkSettings(sets=("retain",), repeats=2, batch_size=4, samples_per_repeat=10,
                                 prompt_variations=0)
    report = run_benchmark(parse_model_specs(["original"], models_root), dataset, evaluator_dir, settings,
                           log=lambda _: None)
    info = report["data"]["sets"]["retain"]
    assert (info["samples"], info["samples_per_repeat"], info["batch_size"]) == (12, 8, 4)
    r1 = report["results"]["retain"]["original"]["r1"]["values"]
    assert all(abs(v * 8 % 1) < 1e-9 for v in r1)  # the mean of 2 batches of 4: multiples of 1/8
    with pytest.raises(ValueError, match="samples_per_repeat is 2; give at least 4"):
        run_benchmark(parse_model_specs(["original"], models_root), dataset, evaluator_dir,
                      dataclasses.replace(settings, samples_per_repeat=2))


def test_an_lcr_row_needs_removed_codes(dataset, models_root, evaluator_dir):
    specs = parse_model_specs(f"original={models_root / 'original'},lcr={models_root / 'original'}")
    with pytest.raises(ValueError, match=r"model 'lcr' has no removed codes for concept 'violence'"):
        run_benchmark(specs, dataset, evaluator_dir, quick_settings())


def test_a_model_unlearned_for_another_concept_is_refused(dataset, models_root, evaluator_dir):
    settings = quick_settings(BenchmarkSettings(concept="kick", rule="paper"))
    with pytest.raises(ValueError, match=r"was unlearned for concept 'violence', but the benchmark measures 'kick'"):
        run_benchmark(parse_model_specs("lcr", models_root), dataset, evaluator_dir, settings)


def test_evaluator_and_data_feature_sizes_must_match(dataset, models_root, tmp_path):
    config = dataclasses.replace(TINY_EVALUATOR, dim_pose=251)
    wrong = save_evaluator(CoEmbedding(config), np.zeros(251), np.ones(251), tmp_path / "kit")
    with pytest.raises(ValueError, match=r"takes 251-d motion features but the dataset .* holds 263-d"):
        run_benchmark(parse_model_specs("original", models_root), dataset, wrong, quick_settings())


def test_missing_split_and_bad_model_lists(dataset, models_root, evaluator_dir, tmp_path, capsys):
    settings = quick_settings(BenchmarkSettings(rule="paper"))
    with pytest.raises(FileNotFoundError, match=r"test-w-violence.txt: forget split missing; write it with "
                                                r"`safemotion data split"):
        run_benchmark(parse_model_specs("original", models_root), dataset, evaluator_dir, settings)
    with pytest.raises(ValueError, match="model 'original' has no directory"):
        parse_model_specs("original")
    with pytest.raises(ValueError, match=r"model name\(s\) \['original'\] given more than once"):
        parse_model_specs("original,original", models_root)
    with pytest.raises(FileNotFoundError, match="model directory of 'rece' not found"):
        parse_model_specs("rece", models_root)
    code = cli.main(["eval", "--models", "original", "--data", str(dataset), "--evaluator", str(evaluator_dir),
                     "--out", str(tmp_path / "r")])
    assert code == 2 and "has no directory" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- rows added to a report

ADD_SETTINGS = BenchmarkSettings(repeats=2, max_samples=12, prompt_variations=1, max_prompts=2)


@pytest.fixture(scope="module")
def bamm_root(dataset, models_root, tmp_path_factory):
    """A BAMM model sharing the original's VQ and length estimator, and its LCR edit (`bamm-lcr`)."""
    root = tmp_path_factory.mktemp("bamm-models")
    torch.manual_seed(5)
    bamm = build_models(dataclasses.replace(tiny_model_config(), generator="bamm"))
    original = load_model_dir(models_root / "original")
    bamm.vq.load_state_dict(original.vq.state_dict())
    bamm.length_estimator.load_state_dict(original.length_estimator.state_dict())
    bamm.std = original.std
    with torch.no_grad():  # END likely enough that flag-rate motions end before the 49 slots
        bamm.mask_transformer.output_process.poseFinal.bias[bamm.mask_transformer.end_id] = 2.0
    save_model_dir(bamm.eval(), root / "bamm")
    run_lcr(LCROptions(model=root / "bamm", data=dataset, out=root / "bamm-lcr", k=4, repeats=2, cache_dir=None,
                       device="cpu", progress=False))
    return root


def test_an_lcr_edit_shares_its_models_tokens(dataset, models_root, evaluator_dir):
    """original and lcr differ only in the VQ: one sampling per repeat, the same numbers as two separate runs."""
    specs = parse_model_specs(["original", "lcr", "finetune"], models_root)
    together = run_benchmark(specs, dataset, evaluator_dir, ADD_SETTINGS, log=lambda _: None)
    alone = run_benchmark(parse_model_specs(["lcr"], models_root), dataset, evaluator_dir, ADD_SETTINGS,
                          log=lambda _: None)
    for set_name in ("forget", "retain"):
        for metric, entry in alone["results"][set_name]["lcr"].items():
            if metric != "seconds_per_motion":
                assert together["results"][set_name]["lcr"][metric]["values"] == entry["values"], metric
    assert together["flag_rates"]["lcr"] is together["flag_rates"]["original"]  # same tokens, codes and threshold
    assert together["flag_rates"]["finetune"] is not together["flag_rates"]["original"]
    assert together["flag_rates"]["lcr"] == alone["flag_rates"]["lcr"]


def test_bamm_rows_added_to_a_momask_report(dataset, models_root, bamm_root, evaluator_dir, tmp_path, capsys):
    base = run_benchmark(parse_model_specs(["original", "lcr"], models_root), dataset, evaluator_dir, ADD_SETTINGS,
                         log=lambda _: None)
    write_report(base, tmp_path / "report", title="Mini benchmark")
    rows = f"bamm={bamm_root / 'bamm'},bamm-lcr={bamm_root / 'bamm-lcr'}"
    code = cli.main(["eval", "--models", rows, "--data", str(dataset), "--evaluator", str(evaluator_dir),
                     "--add-to", str(tmp_path / "report"), "--repeats", "1"])
    assert code == 0, capsys.readouterr().err
    merged = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [m["name"] for m in merged["models"]] == ["original", "lcr", "bamm", "bamm-lcr"]
    for set_name in ("forget", "retain"):
        for name in ("real motions", "original", "lcr"):  # the report's own rows, untouched
            assert merged["results"][set_name][name] == json.loads(json.dumps(base["results"][set_name][name]))
        for name in ("bamm", "bamm-lcr"):
            assert all(len(e["values"]) == 1 for e in merged["results"][set_name][name].values())
    # bamm-lcr is the same edit of the shared codebook as the MoMask lcr row
    assert merged["models"][3]["removed_base_codes"] == merged["models"][1]["removed_base_codes"] > 0
    flags = merged["flag_rates"]
    assert flags["bamm"]["codes_from"] == "bamm-lcr" and flags["bamm"] == flags["bamm-lcr"]
    assert flags["original"] == json.loads(json.dumps(base["flag_rates"]["original"]))
    (addition,) = merged["additions"]
    assert addition["rows"] == ["bamm", "bamm-lcr"] and addition["repeats"] == 1
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert markdown.startswith("# Mini benchmark\n")  # the report keeps its title
    assert "- Rows bamm, bamm-lcr added by a later run on the same samples, crops and seeds" in markdown
    assert "**1 repeat(s)**" in markdown and "| bamm-lcr |" in markdown
    original_fid = base["results"]["retain"]["original"]["fid"]
    assert f"| original | {original_fid['mean']:.3f} ± {original_fid['ci95']:.3f} |" in markdown

    again = ["eval", "--models", rows, "--data", str(dataset), "--evaluator", str(evaluator_dir), "--add-to",
             str(tmp_path / "report")]
    assert cli.main(again) == 2 and "already has row(s) ['bamm', 'bamm-lcr']" in capsys.readouterr().err
    assert cli.main(again[:-2] + ["--add-to", str(tmp_path / "report"), "--repeats", "3"]) == 2
    assert "rows added to it may have as many repeats or fewer" in capsys.readouterr().err


def test_added_rows_must_score_the_same_samples(dataset, models_root, evaluator_dir):
    base = run_benchmark(parse_model_specs(["original"], models_root), dataset, evaluator_dir, ADD_SETTINGS,
                         log=lambda _: None)
    other_seed = run_benchmark(parse_model_specs(["finetune"], models_root), dataset, evaluator_dir,
                               dataclasses.replace(ADD_SETTINGS, seed=1), log=lambda _: None)
    with pytest.raises(ValueError, match=r"was made with seed = 0, the added run with 1"):
        add_rows(base, other_seed)
    same = run_benchmark(parse_model_specs(["finetune"], models_root), dataset, evaluator_dir,
                         report_settings(base, repeats=1), log=lambda _: None)
    assert add_rows(base, same)["results"]["retain"]["finetune"] == same["results"]["retain"]["finetune"]
    tampered = json.loads(json.dumps(same))
    tampered["results"]["retain"]["real motions"]["fid"]["values"][0] += 5e-5  # float rounding: accepted
    assert "finetune" in add_rows(base, tampered)["results"]["retain"]
    tampered["results"]["retain"]["real motions"]["fid"]["values"][0] += 1e-3
    with pytest.raises(ValueError, match=r"retain set's real-motion fid differs .* by up to 0.001.* scored other crops"):
        add_rows(base, tampered)
