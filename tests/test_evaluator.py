"""Text-motion evaluator: official checkpoint format (strict load), word inputs, motion embedding, and training on a
tiny synthetic dataset that must beat chance."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from safemotion import cli
from safemotion.data.captions import caption_line
from safemotion.eval.evaluator import (
    COMPONENTS,
    POS_ENUMERATOR,
    CoEmbedding,
    Evaluator,
    EvaluatorConfig,
    EvaluatorError,
    GloveVectorizer,
    MiniLMWordVectorizer,
    load_evaluator,
    load_official_evaluator,
    pad_tokens,
)
from safemotion.eval.train_evaluator import EvaluatorTraining, train_evaluator

TINY = EvaluatorConfig(dim_movement_enc_hidden=32, dim_movement_latent=32, dim_motion_hidden=32, dim_text_hidden=32,
                       dim_coemb_hidden=16)
GLOVE_WORDS = ["sos", "eos", "unk", "a", "person", "kick", "left", "walk", "slowly"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def minilm():
    return MiniLMWordVectorizer()


def write_glove(folder, dim=300, words=GLOVE_WORDS):
    folder.mkdir(parents=True, exist_ok=True)
    vectors = np.random.default_rng(0).normal(size=(len(words), dim)).astype(np.float32)
    np.save(folder / "our_vab_data.npy", vectors)
    (folder / "our_vab_words.pkl").write_bytes(pickle.dumps(list(words)))
    (folder / "our_vab_idx.pkl").write_bytes(pickle.dumps({w: i for i, w in enumerate(words)}))
    return vectors


def write_meta(folder, dim=263):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    np.save(folder / "mean.npy", rng.normal(size=dim).astype(np.float32))
    np.save(folder / "std.npy", rng.uniform(0.5, 2.0, size=dim).astype(np.float32))


# ---------------------------------------------------------------------------------------------- official format

@pytest.fixture(scope="module")
def official_files(shared_dir, tmp_path_factory):
    """finest.tar with random tensors of exactly the keys and shapes of the released evaluator, plus GloVe and meta."""
    spec = json.loads((shared_dir / "reference" / "momask_state_dicts.json").read_text())["evaluator"]
    root = tmp_path_factory.mktemp("official")
    generator = torch.Generator().manual_seed(0)
    payload = {name: {key: 0.05 * torch.randn(shape, generator=generator)
                      for key, shape in spec[name]["params"].items()} for name in COMPONENTS}
    payload.update(opt_text_encoder={"state": {}, "param_groups": []},
                   opt_motion_encoder={"state": {}, "param_groups": []}, epoch=120, iter=4000)
    checkpoint = root / "t2m" / "text_mot_match" / "model" / "finest.tar"
    checkpoint.parent.mkdir(parents=True)
    torch.save(payload, checkpoint)
    write_glove(root / "glove")
    write_meta(root / "t2m" / "Comp_v6_KLD005" / "meta")
    return root, payload


def test_official_checkpoint_loads_strictly_with_its_sizes(official_files):
    root, payload = official_files
    evaluator = load_official_evaluator(root / "t2m" / "text_mot_match", root / "glove",
                                        root / "t2m" / "Comp_v6_KLD005" / "meta")
    config = evaluator.config
    assert (config.word_features, config.dim_word, config.dim_pos_ohot, config.dim_pose) == ("glove", 300, 15, 263)
    assert (config.dim_text_hidden, config.dim_motion_hidden, config.dim_coemb_hidden) == (512, 1024, 512)
    assert (config.dim_movement_enc_hidden, config.dim_movement_latent) == (512, 512)
    for name in COMPONENTS:
        loaded = getattr(evaluator.networks, name).state_dict()
        assert loaded.keys() == payload[name].keys()
        assert all(torch.equal(loaded[k], payload[name][k]) for k in loaded)
    texts = evaluator.embed_texts(["a person kicks", "a person walks slowly"],
                                  [["a/DET", "person/NOUN", "kick/VERB"], ["a/DET", "person/NOUN", "walk/VERB",
                                                                           "slowly/ADV"]])
    rng = np.random.default_rng(2)
    motions = [rng.normal(size=(n, 263)).astype(np.float32) for n in (64, 41, 196)]
    embedded = evaluator.embed_motions(motions)
    assert texts.shape == (2, 512) and embedded.shape == (3, 512)
    assert np.isfinite(texts).all() and np.isfinite(embedded).all()
    # input order kept; each motion embedded as if alone (41 frames are floored to 40)
    for motion, row in zip(motions, embedded):
        np.testing.assert_allclose(evaluator.embed_motions([motion])[0], row, atol=1e-4)


def test_official_checkpoint_problems_are_named(official_files, tmp_path):
    root, payload = official_files
    broken = {name: dict(state) for name, state in payload.items() if name in COMPONENTS}
    del broken["motion_encoder"]["gru.bias_hh_l0_reverse"]
    torch.save(broken, tmp_path / "finest.tar")
    with pytest.raises(EvaluatorError, match=r"motion_encoder\].*missing 'gru.bias_hh_l0_reverse'"):
        load_official_evaluator(tmp_path / "finest.tar", root / "glove", root / "t2m" / "Comp_v6_KLD005" / "meta")
    torch.save({"text_encoder": payload["text_encoder"]}, tmp_path / "partial.tar")
    with pytest.raises(EvaluatorError, match="no state dict under motion_encoder, movement_encoder"):
        load_official_evaluator(tmp_path / "partial.tar", root / "glove", root / "t2m" / "Comp_v6_KLD005" / "meta")
    with pytest.raises(EvaluatorError, match="GloVe vectors have 8 dimensions, the evaluator expects 300"):
        write_glove(tmp_path / "glove8", dim=8)
        load_official_evaluator(root / "t2m" / "text_mot_match", tmp_path / "glove8",
                                root / "t2m" / "Comp_v6_KLD005" / "meta")


def test_glove_vectorizer_follows_the_official_rules(tmp_path):
    vectors = write_glove(tmp_path)
    row = {w: vectors[i] for i, w in enumerate(GLOVE_WORDS)}
    inputs = GloveVectorizer(tmp_path).vectorize([["a/DET", "person/NOUN", "kick/VERB", "***/VERB", "left/ADJ",
                                                   "slowly/ADV", "walk"]], max_text_len=20)
    assert inputs.word_embs.shape == (1, 22, 300) and inputs.pos_onehot.shape == (1, 22, 15)
    assert inputs.lengths.tolist() == [9]
    expected_words = ["sos", "a", "person", "kick", "unk", "left", "slowly", "walk", "eos"] + ["unk"] * 13
    np.testing.assert_array_equal(inputs.word_embs[0].numpy(), np.stack([row[w] for w in expected_words]))
    # VIP lists override the tag, an unknown word is OTHER, a token without '/' keeps the VIP/OTHER rule
    expected_pos = ["OTHER", "DET", "NOUN", "Act_VIP", "OTHER", "Loc_VIP", "Desc_VIP", "Act_VIP", "OTHER"]
    expected_pos += ["OTHER"] * 13
    assert inputs.pos_onehot[0].argmax(-1).tolist() == [POS_ENUMERATOR[p] for p in expected_pos]
    assert inputs.pos_onehot.sum(-1).eq(1).all()


def test_glove_pickles_may_not_name_classes(tmp_path):
    write_glove(tmp_path)
    (tmp_path / "our_vab_words.pkl").write_bytes(pickle.dumps(np.array(["a"])))
    with pytest.raises(EvaluatorError, match="our_vab_words.pkl: not a plain pickled list/dict"):
        GloveVectorizer(tmp_path)


def test_tokens_are_padded_or_cropped_like_the_official_loader():
    padded, length = pad_tokens(["a/DET", "person/NOUN"], max_text_len=20)
    assert length == 4 and len(padded) == 22
    assert padded[:4] == ["sos/OTHER", "a/DET", "person/NOUN", "eos/OTHER"] and set(padded[4:]) == {"unk/OTHER"}
    long = [f"w{i}/NOUN" for i in range(25)]
    padded, length = pad_tokens(long, max_text_len=20)
    assert length == 22 and padded == ["sos/OTHER", *long[:20], "eos/OTHER"]


# ---------------------------------------------------------------------------------------------- SafeMotion format

def test_minilm_word_inputs(minilm):
    inputs = minilm.vectorize([["a/DET", "person/NOUN", "kick/VERB", "forward/ADV"],
                               ["a/DET", "person/NOUN", "***/VERB", "forward/ADV"],
                               ["someone/PRON", "kick/VERB", "a/DET", "ball/NOUN"]], max_text_len=20)
    assert inputs.word_embs.shape == (3, 22, 384) and inputs.lengths.tolist() == [6, 6, 6]
    pos = inputs.pos_onehot.argmax(-1)
    assert pos[0, :6].tolist() == [POS_ENUMERATOR[p] for p in ("OTHER", "DET", "NOUN", "Act_VIP", "Loc_VIP",
                                                                  "OTHER")]
    assert pos[1, 3].item() == POS_ENUMERATOR["OTHER"]  # the masked word
    assert inputs.word_embs[:, 6:].abs().sum() == 0  # padding
    # contextual: the same word differs between sentences, and masking changes the other words too
    kick_a, kick_b = inputs.word_embs[0, 3], inputs.word_embs[2, 2]
    assert 0.5 < torch.cosine_similarity(kick_a, kick_b, dim=0) < 0.999
    assert not torch.allclose(inputs.word_embs[0, 4], inputs.word_embs[1, 4])


def test_motion_embeddings_match_the_official_padding_to_196_frames():
    torch.manual_seed(0)
    networks = CoEmbedding(TINY).eval()
    evaluator = Evaluator(TINY, networks, np.zeros(263, np.float32), np.ones(263, np.float32), None)
    rng = np.random.default_rng(3)
    motions = [rng.normal(size=(n, 263)).astype(np.float32) for n in (40, 77, 196, 120)]
    with torch.no_grad():
        padded = np.zeros((4, 196, 263), np.float32)
        frames = [len(m) // 4 * 4 for m in motions]
        for i, (m, n) in enumerate(zip(motions, frames)):
            padded[i, :n] = m[:n]
        official = networks.encode_motion(torch.from_numpy(padded), torch.tensor(frames)).numpy()
    np.testing.assert_allclose(evaluator.embed_motions(motions), official, atol=1e-5)
    with pytest.raises(ValueError, match=r"motion 0 has shape \[50, 251\]; this evaluator takes \(frames, 263\)"):
        evaluator.embed_motions([np.zeros((50, 251), np.float32)])
    with pytest.raises(ValueError, match="motion 0 has 3 frames; at least 4 needed"):
        evaluator.embed_motions([np.zeros((3, 263), np.float32)])


# ---------------------------------------------------------------------------------------------- training

ACTIONS = ["a person walks forward", "a person jumps up and down", "a person waves the left hand",
           "a person sits down on a chair", "a person kicks with the right leg", "a person turns around in a circle",
           "a person crouches low to the ground", "a person raises both arms over the head"]


def write_synthetic_dataset(root, clips=(("train", 6), ("val", 4), ("test", 4)), seed=0):
    """8 actions; an action is a sinusoid of its own frequency in its own 30 features, plus noise."""
    rng = np.random.default_rng(seed)
    (root / "new_joint_vecs").mkdir(parents=True)
    (root / "texts").mkdir()
    motions = []
    for split, count in clips:
        ids = []
        for action, caption in enumerate(ACTIONS):
            for j in range(count):
                clip_id = f"{split}{action}{j}"
                frames = int(rng.integers(40, 90))
                time = np.arange(frames)[:, None] / 20
                motion = 0.3 * rng.standard_normal((frames, 263))
                motion[:, 30 * action:30 * action + 30] += 2 * np.sin(2 * np.pi * (0.5 + 0.3 * action) * time
                                                                      + rng.uniform(0, 2 * np.pi))
                np.save(root / "new_joint_vecs" / f"{clip_id}.npy", motion.astype(np.float32))
                (root / "texts" / f"{clip_id}.txt").write_text(caption_line(caption) + "\n")
                motions.append(motion)
                ids.append(clip_id)
        (root / f"{split}.txt").write_text("\n".join(ids) + "\n")
    stacked = np.concatenate(motions)
    np.save(root / "Mean.npy", stacked.mean(0).astype(np.float32))
    np.save(root / "Std.npy", stacked.std(0).astype(np.float32))
    return root


def test_tiny_evaluator_trains_beats_chance_and_resumes(minilm, tmp_path):
    data = write_synthetic_dataset(tmp_path / "data")
    out, work = tmp_path / "evaluator", tmp_path / "work"
    training = EvaluatorTraining(iters=200, batch_size=16, lr=3e-3, warmup_iters=10, milestones=(), eval_every=100,
                                 max_minutes=None, seed=0)
    record = train_evaluator(data, out, training, TINY, work=work, progress=False, log=lambda _: None,
                             vectorizer=minilm)
    test = record["test"]
    # 32 test captions, 4 clips per caption: a perfect evaluator ranks the own clip among its 4 look-alikes,
    # so R@1 ≈ 1/4 and R@3 ≈ 3/4; chance is 1/32 and 3/32.
    assert test["pairs"] == 32 and test["real"]["samples"] == 32
    assert test["real"]["r3"] >= 0.5 and test["real"]["r1"] >= 0.15
    assert test["shuffled_pairs"]["r3"] <= test["real"]["r3"] - 0.3
    assert test["fid_real_vs_frame_shuffled"] > 5 * test["fid_real_vs_real"]
    assert [h["iteration"] for h in record["history"]] == [100, 200]

    loaded = load_evaluator(out, with_text=False)
    assert loaded.config == TINY
    assert json.loads((out / "training.json").read_text())["test"]["real"]["r3"] == test["real"]["r3"]
    best = load_file(str(work / "best.safetensors"))
    stored = loaded.networks.state_dict()
    assert stored.keys() == best.keys()
    assert all(torch.equal(stored[k], best[k].half().float()) for k in best)  # fp16 on disk
    np.testing.assert_array_equal(loaded.mean, np.load(data / "Mean.npy"))

    more = EvaluatorTraining(**{**training.__dict__, "iters": 300})
    resumed = train_evaluator(data, out, more, TINY, work=work, resume=True, progress=False, log=lambda _: None,
                              vectorizer=minilm)
    assert resumed["iterations"] == 300
    assert [h["iteration"] for h in resumed["history"]] == [100, 200, 300]
    assert resumed["best"]["score"] >= record["best"]["score"]


def test_cli_train_evaluator_reports_bad_input(tmp_path, capsys):
    common = ["train", "evaluator", "--out", str(tmp_path / "evaluator"), "--minutes", "0", "--device", "cpu"]
    assert cli.main([*common, "--data", str(tmp_path / "missing"), "--iters", "100", "--eval-every", "50"]) == 2
    assert "Mean.npy: dataset statistics not found" in capsys.readouterr().err
    assert cli.main([*common, "--data", str(tmp_path), "--batch-size", "1"]) == 2
    assert "batch_size is 1; contrastive training needs at least 2 pairs" in capsys.readouterr().err
    assert not (tmp_path / "evaluator").exists()
