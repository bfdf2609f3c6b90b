"""Edits of takes (issue 18) on the committed mini models: kept frames bit-identical, inpainting through the one
masked-decoding loop, extend and in-between, the safety review of edits, bad input, and `safemotion edit`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from server_support import run_cli

from safemotion.decoding import SKIP_ID, decode_base
from safemotion.edit import (
    EditSettings,
    Editor,
    Placement,
    SourceMotion,
    crossfade,
    load_source,
    source_from_features,
    source_from_joints,
)
from safemotion.motion.seams import SeamReport, seam_jumps, seam_pairs, velocity_jumps
from safemotion.generate import DEFAULT_MODEL_DIR, GenerationRequest, save_bvh, save_npz
from safemotion.safe_generation import SafeGenerator

LCR_MODEL_DIR = DEFAULT_MODEL_DIR.parent / "safemotion-mini-lcr"
SPAN = (40, 80)
VIOLENT = "a person slashes with a sword normally"


@pytest.fixture(scope="module")
def editor():
    return Editor(SafeGenerator.from_dir(DEFAULT_MODEL_DIR))


@pytest.fixture(scope="module")
def walk(editor) -> SourceMotion:
    motion = editor.safe.generator.generate([GenerationRequest("a person walks forward", 6.0, seed=3)], smpl=False)[0]
    return source_from_features(motion.features, motion.fps, "walk")


def cli(args: list[str]) -> tuple[int, str, str]:
    """`safemotion ARGS` in this process; argparse's own refusals (exit 2) included."""
    try:
        return run_cli(*args)
    except SystemExit as stop:
        return int(stop.code), "", "argparse refused the arguments: START:END"


def changed_frames(source: np.ndarray, result: np.ndarray) -> np.ndarray:
    return np.flatnonzero((source != result).any(axis=(1, 2)))


def test_decoding_with_nothing_kept_is_generation(editor):
    model = editor.safe.generator.models.mask_transformer
    cond = editor.safe.generator.encode_prompts(["a person waves"]).expand(2, -1)
    lengths = torch.tensor([12, 9])
    plain = decode_base(model, cond, lengths, [torch.Generator().manual_seed(s) for s in (1, 2)],
                        editor.safe.generator.sampling)
    kept = decode_base(model, cond, lengths, [torch.Generator().manual_seed(s) for s in (1, 2)],
                       editor.safe.generator.sampling, kept=torch.full((2, 12), SKIP_ID))
    torch.testing.assert_close(plain, kept, rtol=0, atol=0)


def test_kept_ids_stay_and_the_rest_is_decoded_around_them(editor):
    model = editor.safe.generator.models.mask_transformer
    cond = editor.safe.generator.encode_prompts(["a person jumps"])
    kept = torch.full((1, 20), SKIP_ID)
    kept[0, :6] = 7
    kept[0, 14:] = 9
    ids = decode_base(model, cond, torch.tensor([20]), [torch.Generator().manual_seed(0)],
                      editor.safe.generator.sampling, kept=kept)
    assert ids[0, :6].tolist() == [7] * 6 and ids[0, 14:].tolist() == [9] * 6
    assert (ids[0, 6:14] >= 0).all() and (ids[0, 6:14] < model.mask_id).all()


def test_kept_frames_outside_the_blend_window_are_the_source_on_a_generated_take(editor, walk):
    results = editor.edit(walk, [SPAN], "a person jumps", seed=0, variations=2, smpl=False)
    blend, unit = editor.settings.blend_frames, editor.unit
    first, last = SPAN[0] // unit * unit - unit - blend, SPAN[1] + unit + blend  # margin of one token
    for item in results:
        motion = item.motion
        assert item.safety is None  # the plain mini model has no removed codes
        assert motion.joints.shape == walk.joints.shape and motion.joints.dtype == np.float32
        changed = changed_frames(walk.joints, motion.joints)
        assert changed.min() >= first and changed.max() < last
        np.testing.assert_array_equal(motion.joints[:first], walk.joints[:first])
        np.testing.assert_array_equal(motion.joints[last:], walk.joints[last:])
        encoded, _ = editor._encode(walk)  # (re-encoded ids, carried ids: none here)
        np.testing.assert_array_equal(motion.tokens[:SPAN[0] // unit - 1], encoded[:SPAN[0] // unit - 1])
        np.testing.assert_array_equal(motion.tokens[SPAN[1] // unit + 1:], encoded[SPAN[1] // unit + 1:])
        assert motion.features.shape == (len(motion.joints), 263)
    assert not np.array_equal(results[0].motion.joints, results[1].motion.joints)


def test_kept_frames_are_the_source_on_a_real_clip(editor, humanml3d_sample):
    joints = np.load(humanml3d_sample / "new_joints_012314.npy")
    source = source_from_joints(joints, 20.0, "012314")
    motion = editor.edit(source, [(60, 100)], "a person walks forward", seed=1, smpl=False)[0].motion
    assert len(motion.joints) == len(joints) // 4 * 4  # the last partial token is dropped
    changed = changed_frames(source.joints[:len(motion.joints)], motion.joints)
    assert changed.min() >= 56 - 8 and changed.max() < 104 + 8
    np.testing.assert_array_equal(motion.joints[:48], joints[:48].astype(np.float32))
    np.testing.assert_array_equal(motion.joints[112:], joints[112:len(motion.joints)].astype(np.float32))
    # the edited frames are scaled to the clip's bone lengths (each bone's median; the decoder's frame-to-frame
    # changes of length are kept rather than turned into jitter)
    for child, parent in ((4, 1), (7, 4), (18, 16)):
        bones = np.linalg.norm(motion.joints[60:100, child] - motion.joints[60:100, parent], axis=-1)
        clip = np.median(np.linalg.norm(joints[:, child] - joints[:, parent], axis=-1))
        assert abs(np.median(bones) - clip) < 0.02, (child, np.median(bones), clip)


def test_variation_k_is_the_edit_with_seed_plus_k(editor, walk):
    many = editor.edit(walk, [SPAN], "a person jumps", seed=5, variations=3, smpl=False)
    one = editor.edit(walk, [SPAN], "a person jumps", seed=7, smpl=False)[0]
    assert [m.motion.seed for m in many] == [5, 6, 7] and one.motion.seed == 7
    np.testing.assert_array_equal(one.motion.tokens, many[2].motion.tokens)
    np.testing.assert_allclose(one.motion.joints, many[2].motion.joints, atol=1e-5)


def test_the_rows_of_an_edit_decode_together_as_they_decode_alone(editor, walk):
    # An edit decodes all its variations (and each round of seam tries) in one VQ call. Not bitwise: oneDNN's
    # convolutions block a batch differently from a single row (measured: features ≤ 3.8e-6 on values up to 2.3,
    # joints ≤ 1.4e-6 m), so within 1e-5 and 2e-6 m.
    from safemotion.motion.features import recover_from_ric

    rows = [item.motion.tokens for item in editor.edit(walk, [SPAN], "a person jumps", seed=5, variations=3,
                                                       smpl=False)]
    generator = editor.safe.generator
    for row, together in zip(rows, generator.decode_tokens(rows)):
        alone = generator.decode_tokens([row])[0]
        np.testing.assert_allclose(together, alone, rtol=0, atol=1e-5)
        np.testing.assert_allclose(recover_from_ric(together), recover_from_ric(alone), rtol=0, atol=2e-6)


def test_extend_after_and_before_keeps_the_take(editor, walk):
    after = editor.extend(walk, 2.0, "a person waves", seed=0, smpl=False)[0].motion
    assert len(after.joints) == len(walk.joints) + 40 and len(after.tokens) == len(walk.joints) // 4 + 10
    np.testing.assert_array_equal(after.joints[:len(walk.joints) - 8], walk.joints[:-8])
    before = editor.extend(walk, 1.0, "a person waves", at="start", seed=0, smpl=False)[0].motion
    assert len(before.joints) == len(walk.joints) + 20
    np.testing.assert_array_equal(before.joints[28:], walk.joints[8:])
    for motion, seam in ((after, len(walk.joints)), (before, 20)):
        pelvis = motion.joints[:, 0]
        assert np.linalg.norm(pelvis[seam] - pelvis[seam - 1]) < 0.1  # no root teleport at the seam


def test_an_extension_follows_its_prompt_not_the_take(editor, walk):
    # with the whole 6 s walk as context the new 2 s kept walking (0/10 seeds raised both hands); with the take's
    # last 8 tokens it does what it is asked
    from safemotion.eval.adherence import UP, J
    results = editor.extend(walk, 2.0, "a person raises both hands", seed=0, variations=3, smpl=False)
    for result in results:
        last = result.motion.joints[-20:, :, UP]
        assert min(last[:, J["left_wrist"]].max(), last[:, J["right_wrist"]].max()) > last[:, J["head"]].max()


def test_inbetween_keeps_a_and_moves_b_rigidly(editor, walk):
    wave = editor.safe.generator.generate([GenerationRequest("a person waves", 3.0, seed=1)], smpl=False)[0]
    b = source_from_features(wave.features, wave.fps, "wave")
    motion = editor.inbetween(walk, b, 1.5, "a person walks and stops", seed=2, smpl=False)[0].motion
    na, k = len(walk.joints), 28
    assert len(motion.joints) == na + k + len(b.joints)
    np.testing.assert_array_equal(motion.joints[:na - 8], walk.joints[:na - 8])
    moved = motion.joints[na + k + 8:].astype(np.float64)
    original = b.joints[8:].astype(np.float64)
    # a rigid motion keeps every distance between points, and only turns about +Y: heights stay relative
    pair = lambda x: np.linalg.norm(x[:, None] - x[None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(pair(moved.reshape(-1, 3)[::7]), pair(original.reshape(-1, 3)[::7]), atol=1e-4)
    np.testing.assert_allclose(np.diff(moved[..., 1], axis=0), np.diff(original[..., 1], axis=0), atol=1e-5)
    jumps = velocity_jumps(motion.joints.astype(np.float64))
    assert jumps.max() < 0.5 and np.linalg.norm(np.diff(motion.joints[:, 0], axis=0), axis=-1).max() < 0.15


def test_crossfade_and_placement_math():
    rng = np.random.default_rng(0)
    from safemotion.motion.skeleton import rest_joints
    a = rest_joints()[None].repeat(5, 0) + rng.normal(0, 0.01, (5, 22, 3))
    b = a + np.array([0.3, 0.0, 0.1])
    np.testing.assert_allclose(crossfade(a, b, np.zeros(5)), a, atol=1e-9)
    np.testing.assert_allclose(crossfade(a, b, np.ones(5)), b, atol=1e-9)
    half = crossfade(a, b, np.full(5, 0.5))
    np.testing.assert_allclose(half[:, 0], a[:, 0] + [0.15, 0.0, 0.05], atol=1e-9)
    lengths = np.linalg.norm(half[:, 4] - half[:, 1], axis=-1)  # bone lengths stay those of the inputs
    np.testing.assert_allclose(lengths, np.linalg.norm(a[:, 4] - a[:, 1], axis=-1), atol=1e-9)
    place = Placement(0.7, np.array([1.0, 0.2, -3.0]))
    points = rng.normal(size=(4, 3))
    np.testing.assert_allclose(place.inverse().apply(place.apply(points)), points, atol=1e-12)
    other = Placement(-1.1, np.array([0.5, 0.0, 2.0]))
    np.testing.assert_allclose(place.then(other).apply(points), other.apply(place.apply(points)), atol=1e-12)


def test_seam_jump_measure():
    joints = np.zeros((30, 22, 3))
    joints[15:, :, 0] = 0.2  # a 20 cm teleport at frame 15
    assert seam_jumps(joints, [(15, 20)], blend=4) == [pytest.approx(0.2), 0.0]
    assert seam_jumps(joints, [(0, 5)], blend=4) == [0.0]  # a region at the start has one seam
    pairs = seam_pairs(joints, [(15, 30), (0, 5)], blend=4)  # ... and one at the end
    assert pairs == [(pytest.approx(0.2), None), (None, 0.0)]
    report = SeamReport.of(pairs, [(15, 30), (0, 5)], limit=0.1, tries=3)
    assert report.frames == (15, 5) and report.jumps == (pytest.approx(0.2), 0.0)
    assert report.warnings() == ["the seam at frame 15 jumps 0.200 m/frame², over the limit of 0.1 (still over "
                                 "after 3 re-sampling tries); check the motion there or edit it again with another "
                                 "seed"]
    assert SeamReport.of(pairs, [(15, 30), (0, 5)], limit=0.25, tries=0).warnings() == []


def test_eval_edits_reports_the_seam_bound_and_the_measurement_behind_seam_limit(tmp_path):
    rng = np.random.default_rng(0)
    clips = {f"c{i}": np.cumsum(rng.normal(scale=0.02, size=(30 + 5 * i, 22, 3)), axis=0) for i in range(6)}
    (tmp_path / "new_joints").mkdir()
    for name, joints in clips.items():
        np.save(tmp_path / "new_joints" / f"{name}.npy", joints.astype(np.float32))
    (tmp_path / "train.txt").write_text("c0\nc1\nc2\nc3\n")
    (tmp_path / "test.txt").write_text("c4\nc5\n")
    code, out, err = cli(["eval-edits", "--data", str(tmp_path), "--bounds-only"])
    assert code == 0, err
    report = json.loads(out)

    def p95(names):
        return np.percentile(np.concatenate([velocity_jumps(clips[n].astype(np.float32).astype(np.float64))
                                             for n in names]), 95)

    assert report["bound"]["split"] == "test" and report["bound"]["clips"] == 2
    assert report["bound"]["p95_velocity_jump_m"] == pytest.approx(p95(["c4", "c5"]), rel=1e-12)
    limit = report["seam_limit"]
    assert limit["split"] == "train" and limit["clips"] == 4 and limit["frames"] == 4 * 28 + 5 * 6
    assert limit["p95_velocity_jump_m"] == pytest.approx(p95(["c0", "c1", "c2", "c3"]), rel=1e-12)
    assert limit["setting_m"] == EditSettings().seam_limit == 0.119


def jump_edit(editor, walk, settings):
    """The jump edit of the walk's SPAN, seed 1, under `settings`."""
    return Editor(editor.safe, settings).edit(walk, [SPAN], "a person jumps", seed=1, smpl=False)[0].motion


def test_a_seam_over_the_limit_resamples_only_its_own_boundary_token(editor, walk):
    once = jump_edit(editor, walk, EditSettings(seam_retries=0))
    unit, blend = editor.unit, editor.settings.blend_frames
    t0, t1 = SPAN[0] // unit - 1, SPAN[1] // unit + 1  # the region: the span and a margin token each side
    region = (t0 * unit, t1 * unit)
    (start, end), = seam_pairs(once.joints, [region], blend)
    assert once.seams.frames == region and once.seams.jumps == (start, end) and once.seams.tries == 0
    # a limit between the two seams: only the worse one is over it, so only its boundary token may be re-sampled
    limit = (start + end) / 2
    offending = t0 if start > end else t1 - 1
    retried = jump_edit(editor, walk, EditSettings(seam_limit=limit))
    differs = np.flatnonzero((once.tokens != retried.tokens).any(axis=1))
    assert differs.tolist() == [offending]  # a try was kept, and it changed that token alone (all its layers)
    np.testing.assert_array_equal(np.delete(retried.tokens, offending, 0), np.delete(once.tokens, offending, 0))
    assert retried.seams.tries >= 1 and max(retried.seams.jumps) < max(start, end)
    np.testing.assert_array_equal(retried.joints[:region[0] - blend], walk.joints[:region[0] - blend])
    np.testing.assert_array_equal(retried.joints[region[1] + blend:], walk.joints[region[1] + blend:len(once.joints)])
    again = jump_edit(editor, walk, EditSettings(seam_limit=limit))  # the tries are seeded: the same result
    np.testing.assert_array_equal(again.joints, retried.joints)


def test_an_edit_whose_seam_tries_all_fail_says_so(editor, walk, tmp_path):
    unit, blend = editor.unit, editor.settings.blend_frames
    region = ((SPAN[0] // unit - 1) * unit, (SPAN[1] // unit + 1) * unit)
    failed = jump_edit(editor, walk, EditSettings(seam_limit=1e-6, seam_retries=2))  # no seam can be this smooth
    (start, end), = seam_pairs(failed.joints, [region], blend)
    assert failed.seams.tries == 2 and failed.seams.to_dict()["seams"] == [
        {"frame": region[0], "jump_m": start}, {"frame": region[1], "jump_m": end}]
    warnings = failed.seams.warnings()
    assert len(warnings) == 2
    for warning, frame, jump in zip(warnings, region, (start, end)):
        assert f"the seam at frame {frame} jumps {jump:.3f} m/frame², over the limit of 1e-06" in warning
        assert "after 2 re-sampling tries" in warning
    assert jump_edit(editor, walk, EditSettings(seam_limit=1.0)).seams.warnings() == []  # all within: nothing said
    # the CLI's record (stdout and the .npz metadata) and its stderr carry them
    motion = editor.safe.generator.generate([GenerationRequest("a person walks forward", 6.0, seed=3)])[0]
    save_npz(motion, tmp_path / "walk.npz")
    code, out, err = cli(["edit", str(tmp_path / "walk.npz"), "--frames", f"{SPAN[0]}:{SPAN[1]}", "--prompt",
                          "a person jumps", "--seed", "1", "--seam-limit", "1e-6", "--out", str(tmp_path / "e.npz"),
                          "--device", "cpu"])
    assert code == 0, err
    record = json.loads(out)[0]["seams"]
    assert [s["frame"] for s in record["seams"]] == list(region) and record["tries"] == 8
    assert len(record["warnings"]) == 2 and all(w in err for w in record["warnings"])
    with np.load(tmp_path / "e.npz") as data:
        assert json.loads(str(data["metadata"]))["seams"] == record


# ---------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("spans, says", [
    ([], "no frame span given"),
    ([(30, 30)], "span 1 (30:30) is empty"),
    ([(100, 130)], "span 1 (100:130) lies outside the take, which has frames 0:120"),
    ([(-4, 10)], "lies outside the take"),
    ([(10, 40), (30, 60)], "spans 10:40 and 30:60 overlap"),
    ([(10, 12)], "shorter than one token (4 frames)"),
])
def test_bad_spans_name_the_problem(editor, walk, spans, says):
    with pytest.raises(ValueError, match=None) as err:
        editor.edit(walk, spans, "a person jumps")
    assert says in str(err.value)


def test_bad_sources_name_the_problem(editor, walk, tmp_path):
    fast = SourceMotion(walk.joints, 30.0, walk.features, "fast.npz")
    with pytest.raises(ValueError, match="fast.npz is at 30 fps but the model works at 20 fps"):
        editor.edit(fast, [SPAN], "a person jumps")
    with pytest.raises(ValueError, match="different frame rates"):
        editor.inbetween(walk, fast, 1.0, "a person turns")
    with pytest.raises(ValueError, match="unknown source format '.txt'"):
        load_source(tmp_path / "take.txt")
    with pytest.raises(ValueError, match="expected \\[T, 22, 3\\]"):
        source_from_joints(np.zeros((30, 21, 3)), 20.0)
    with pytest.raises(ValueError, match="seconds is 40"):
        editor.extend(walk, 40.0, "a person waves")
    with pytest.raises(ValueError, match="at is 'middle'"):
        editor.extend(walk, 1.0, "a person waves", at="middle")
    with pytest.raises(ValueError, match="margin_tokens is 9"):
        EditSettings(margin_tokens=9).validate()
    with pytest.raises(ValueError, match="seam_limit is -0.1"):
        EditSettings(seam_limit=-0.1).validate()
    with pytest.raises(ValueError, match="seam_retries is 9"):
        EditSettings(seam_retries=9).validate()


def test_cli_edits_files_and_writes_nothing_on_bad_input(editor, walk, tmp_path):
    motion = editor.safe.generator.generate([GenerationRequest("a person walks forward", 4.0, seed=1)])[0]
    save_npz(motion, tmp_path / "walk.npz")
    save_bvh(motion, tmp_path / "walk.bvh")
    from_bvh = load_source(tmp_path / "walk.bvh")
    assert from_bvh.fps == 20.0 and from_bvh.joints.shape == (80, 22, 3)
    code, out, err = cli(["edit", str(tmp_path / "walk.npz"), "--frames", "20:40", "--prompt", "a person jumps",
                              "--variations", "2", "--out", str(tmp_path / "jump.npz"), "--device", "cpu"])
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.glob("jump*")) == ["jump_1.npz", "jump_2.npz"]
    edited = load_source(tmp_path / "jump_1.npz")
    np.testing.assert_array_equal(edited.joints[:8], motion.joints[:8])
    code, out, err = cli(["edit", str(tmp_path / "walk.bvh"), "--extend", "1.0", "--prompt", "a person waves",
                              "--out", str(tmp_path / "longer.bvh"), "--device", "cpu"])
    assert code == 0 and load_source(tmp_path / "longer.bvh").num_frames == 100, err
    code, out, err = cli(["edit", "--between", str(tmp_path / "walk.npz"), str(tmp_path / "walk.bvh"),
                              "--seconds", "1.0", "--prompt", "a person turns", "--out", str(tmp_path / "mid.npz"),
                              "--device", "cpu"])
    assert code == 0 and load_source(tmp_path / "mid.npz").num_frames == 180, err
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, says in ((["--frames", "70:90"], "outside the take"), (["--frames", "20:22"], "shorter than one token"),
                       (["--frames", "10:30", "--frames", "20:40"], "overlap"), (["--frames", "2-9"], "START:END"),
                       (["--frames", "10:30", "--extend", "1"], "exactly one of")):
        code, out, err = cli(["edit", str(tmp_path / "walk.npz"), *args, "--prompt", "a person jumps",
                                  "--out", str(tmp_path / "bad.npz"), "--device", "cpu"])
        assert code == 2 and says in err, err
    code, out, err = cli(["edit", str(tmp_path / "walk.fbx2"), "--frames", "10:30", "--prompt", "jump",
                              "--out", str(tmp_path / "bad.npz")])
    assert code == 2 and "unknown source format" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ---------------------------------------------------------------------------------------------- safety

@pytest.fixture(scope="module")
def lcr_editor():
    return Editor(SafeGenerator.from_dir(LCR_MODEL_DIR))


def test_violent_edit_of_a_safe_take_is_flagged_and_handled_by_the_policy(lcr_editor):
    safe = lcr_editor.safe
    motion = safe.generate([GenerationRequest("a person walks forward", 6.0, seed=3)], smpl=False)[0][0]
    assert not motion.safety.flagged
    walk = source_from_features(motion.motion.features, 20.0, "walk")
    assert not lcr_editor.edit(walk, [SPAN], "a person walks forward", smpl=False)[0].safety.flagged
    sanitized = lcr_editor.edit(walk, [SPAN], VIOLENT, seed=0, variations=2, smpl=False)
    blocked = lcr_editor.edit(walk, [SPAN], VIOLENT, seed=0, variations=2, policy="block", smpl=False)
    allowed = lcr_editor.edit(walk, [SPAN], VIOLENT, seed=0, variations=2, policy="allow", smpl=False)
    for s, b, a in zip(sanitized, blocked, allowed):
        assert s.safety.flagged and s.safety.decision == "sanitized" and s.safety.hit_ratio >= s.safety.threshold
        assert b.blocked and b.safety.decision == "blocked"
        assert a.safety.decision == "allowed" and not a.blocked
        np.testing.assert_array_equal(s.motion.tokens, a.motion.tokens)  # the same ids, other codebook
        assert not np.allclose(s.motion.joints[36:84], a.motion.joints[36:84], atol=1e-3)
        # the spans are frames of the edited take, inside the regenerated tokens
        assert s.safety.spans and all(36 <= start < end <= 84 for start, end in s.safety.spans)


def test_a_take_decoded_with_allow_stays_flagged_after_an_edit(lcr_editor):
    violent = lcr_editor.safe.generate([GenerationRequest(VIOLENT, 6.0, seed=0)], policy="allow", smpl=False)[0][0]
    assert violent.safety.flagged
    # as `safemotion generate --policy allow --out take.npz` writes it: features, which re-encode to most of its ids
    source = source_from_features(violent.motion.features, 20.0, "violent")
    edited = lcr_editor.edit(source, [(100, 116)], "a person walks forward", smpl=False)[0]
    assert edited.safety.flagged and edited.safety.decision == "sanitized"
    kept_hits = [t for t in edited.safety.hit_tokens if t < 24]
    assert kept_hits, "hits on tokens kept from the source count"
    assert lcr_editor.edit(source, [(100, 116)], "a person walks forward", policy="block", smpl=False)[0].blocked


@pytest.fixture(scope="module")
def slashes(lcr_editor):
    """Four allow-decoded sword slashes of 6 s (seeds 0-3): flagged takes that use 106 removed codes between them."""
    return [item.motion for item in lcr_editor.safe.generate([GenerationRequest(VIOLENT, 6.0, seed=0, variations=4)],
                                                             policy="allow", smpl=False)[0]]


# A take known only by its joints (the server's and add-on's edits, a .bvh) is re-encoded through extract_features.
# On these four slashes (own removed-code hits 26 + 26 + 28 + 26 = 106), frames 100-116 regenerated: HumanML3D's floor
# (the retargeted take's lowest joint lifted onto the floor; the retarget had sunk its feet 11-13 cm) gave 23 hits on
# the kept tokens 0-23 and left 3 of 4 edits unflagged; the take's own floor kept through the retarget (ground_first)
# gives 52 hits (45 before stop 10's foot clean-up: grounding on the median planted toe, the stance slide) and 0 of 4
# unflagged; with the take's own ids carried as well, 90 hits (each kept token whose own id is removed), 0 of 4
# unflagged.
def test_a_take_decoded_with_allow_stays_flagged_after_an_edit_of_its_joints(lcr_editor, slashes):
    removed = list(lcr_editor.safe.removed_codes)
    kept_hits = {"re-encoded": 0, "carried": 0}
    for motion in slashes:
        own = set(np.flatnonzero(np.isin(motion.base_tokens[:24], removed)).tolist())
        for how, ids in (("re-encoded", None), ("carried", motion.base_tokens)):
            source = source_from_joints(motion.joints, 20.0, "slash", ids)
            edited = lcr_editor.edit(source, [(100, 116)], "a person walks forward", smpl=False)[0]
            assert edited.safety.flagged and edited.safety.decision == "sanitized", (how, edited.safety.reason)
            kept_hits[how] += sum(t < 24 for t in edited.safety.hit_tokens)
        assert own <= set(edited.safety.hit_tokens)  # every kept token whose carried id is removed
        np.testing.assert_array_equal(edited.motion.tokens[:24, 0], motion.base_tokens[:24])  # an edit of the edit
    assert kept_hits == {"re-encoded": 52, "carried": 90}


def test_an_edits_review_counts_hits_once_and_reads_kept_ids_twice_only_when_carried(lcr_editor, slashes,
                                                                                   monkeypatch):
    from safemotion.unlearn import flagging

    counted, second_readings = [], []
    count, review = flagging.hit_token_indices, lcr_editor.safe.review
    monkeypatch.setattr(flagging, "hit_token_indices", lambda *a, **k: counted.append(1) or count(*a, **k))
    monkeypatch.setattr(lcr_editor.safe, "review",
                        lambda *a, **k: second_readings.append(k["also_tokens"]) or review(*a, **k))
    motion = slashes[0]
    for ids in (None, motion.base_tokens):
        counted.clear()
        edited = lcr_editor.edit(source_from_joints(motion.joints, 20.0, "slash", ids), [(100, 116)],
                                 "a person walks forward", variations=2, smpl=False)
        assert len(counted) == 2, "one count of each motion's hits (the screened model's ratio included)"
        assert all(item.safety.screened and item.safety.flagged for item in edited)
    without, carried = second_readings
    assert without is None  # no carried ids: the kept tokens' base ids ARE the re-encoded ones
    assert len(carried) == 2 and (carried[0][:24] >= 0).all() and (carried[0][24:] == -1).all()


def test_carried_ids_come_from_the_take_file_and_are_checked(lcr_editor, slashes, tmp_path):
    motion = slashes[0]
    save_npz(motion, tmp_path / "slash.npz")
    np.testing.assert_array_equal(load_source(tmp_path / "slash.npz").base_tokens, motion.base_tokens)
    np.savez(tmp_path / "exported.npz", joints=motion.joints, tokens=motion.tokens, fps=20.0)
    exported = load_source(tmp_path / "exported.npz")
    assert exported.features is None
    np.testing.assert_array_equal(exported.base_tokens, motion.base_tokens)
    for ids, says in ((motion.base_tokens[:-1], "29 base_tokens for 120 frames; a take of 120 frames has 30 tokens"),
                      (np.full(30, 512), "base_tokens[0] is 512; the model's base codes are 0-511"),
                      (np.full(30, -1), "base_tokens[0] is -1"),
                      (motion.base_tokens.astype(np.float32), "base_tokens are float32; expected integer code ids"),
                      (motion.tokens, "base_tokens have shape [30, 6]; expected [30]")):
        with pytest.raises(ValueError, match=None) as err:
            lcr_editor.edit(source_from_joints(motion.joints, 20.0, "slash", ids), [(100, 116)], "a person walks")
        assert says in str(err.value), str(err.value)


def test_cli_edit_of_an_exported_take_keeps_its_flags(slashes, tmp_path):
    motion = slashes[1]
    np.savez(tmp_path / "slash.npz", joints=motion.joints, base_tokens=motion.base_tokens, fps=20.0)
    code, out, err = cli(["edit", str(tmp_path / "slash.npz"), "--frames", "100:116", "--prompt",
                          "a person walks forward", "--model", str(LCR_MODEL_DIR), "--out", str(tmp_path / "e.npz"),
                          "--device", "cpu"])
    assert code == 0, err
    safety = json.loads(out)[0]["safety"]
    assert safety["flagged"] and safety["decision"] == "sanitized"
    np.testing.assert_array_equal(load_source(tmp_path / "e.npz").base_tokens[:24], motion.base_tokens[:24])
    np.savez(tmp_path / "trimmed.npz", joints=motion.joints[:-8], base_tokens=motion.base_tokens, fps=20.0)
    code, out, err = cli(["edit", str(tmp_path / "trimmed.npz"), "--frames", "40:60", "--prompt", "a person walks",
                          "--model", str(LCR_MODEL_DIR), "--out", str(tmp_path / "bad.npz"), "--device", "cpu"])
    assert code == 2 and "30 base_tokens for 112 frames" in err, err
    assert not (tmp_path / "bad.npz").exists()


# ---------------------------------------------------------------------------------------------- server

@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from fastapi.testclient import TestClient
    from server_support import build_tiny_lcr_model

    from safemotion.serve.app import create_app
    from safemotion.serve.settings import ServerSettings

    root = tmp_path_factory.mktemp("edit_server")
    settings = ServerSettings(model=str(build_tiny_lcr_model(root / "tiny-lcr")), data_dir=root / "data",
                              device="cpu", threads=1, max_batch=4)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_edit_endpoint_answers_like_generate(client):
    from safemotion.serve import schemas
    from safemotion.serve.encoding import decode_array, encode_array

    take = client.post("/v1/generate", json={"prompt": "a person walks", "seconds": 4.0, "seed": 1}).json()
    joints = decode_array(take["motions"][0]["joints"])
    source = {"joints": encode_array(joints), "fps": 20.0}
    # regenerate 20:40 (tokens 4-10: frames 16-44), prepend 1 s (frames 0-20), in-between (frames 80-100)
    seam_frames = {"frames": [16, 44], "extend_seconds": [20], "between": [80, 100]}
    for extra in ({"frames": [[20, 40]]}, {"extend_seconds": 1.0, "extend_at": "start"},
                  {"between": source, "seconds": 1.0}):
        response = client.post("/v1/edit", json={"source": source, "prompt": "a person jumps", "seed": 3,
                                                 "variations": 2, **extra})
        assert response.status_code == 200, response.text
        body = schemas.GenerateResponse.model_validate(response.json())
        assert [m.seed for m in body.motions] == [3, 4]
        for motion in body.motions:
            edited = decode_array(motion.joints.model_dump())
            tokens = decode_array(motion.tokens.model_dump())
            assert len(edited) == 4 * len(tokens) == motion.frames and motion.safety is not None
            assert motion.safety.hit_tokens == [t for t, c in enumerate(tokens[:, 0]) if c % 8 == 0]
            # every seam is reported; those still over the limit after the tries are named in the warnings
            seams = motion.seams
            assert seams.limit_m == 0.119 and [s.frame for s in seams.seams] == seam_frames[next(iter(extra))]
            assert 0 <= seams.tries <= 8
            over = [s for s in seams.seams if s.jump_m > seams.limit_m]
            assert len(seams.warnings) == len(over)
            for seam, warning in zip(over, seams.warnings):
                assert f"the seam at frame {seam.frame} jumps {seam.jump_m:.3f} m/frame², over the limit" in warning
    edited = client.post("/v1/edit", json={"source": source, "prompt": "a person jumps", "frames": [[20, 40]]}).json()
    np.testing.assert_array_equal(decode_array(edited["motions"][0]["joints"])[:8], joints[:8])
    from safemotion.motion.features import extract_features

    features = {"features": encode_array(extract_features(np.concatenate([joints, joints[-1:]]))), "fps": 20.0}
    assert client.post("/v1/edit", json={"source": features, "prompt": "a person jumps",
                                         "frames": [[20, 40]]}).status_code == 200
    log = client.app.state.server.store.audit_entries(None, None, None, None, "edit", None, 100)
    assert len(log) == 8 and {row["prompt"] for row in log} == {"a person jumps"}


def test_edit_endpoint_counts_the_ids_a_take_carries(client, monkeypatch):
    from server_support import NUM_CODES

    from safemotion import edit as edit_module

    from safemotion.serve.encoding import decode_array, encode_array

    assert client.get("/v1/models").json()["models"][0]["codebook_size"] == NUM_CODES
    take = client.post("/v1/generate", json={"prompt": "a person walks", "seconds": 4.0, "seed": 1}).json()
    joints = decode_array(take["motions"][0]["joints"])
    removed = np.zeros(20, dtype=np.int64)  # code 0 is removed in the tiny model: every kept token carries a hit
    source = {"joints": encode_array(joints), "fps": 20.0, "base_tokens": encode_array(removed, "int64")}
    body = client.post("/v1/edit", json={"source": source, "prompt": "a person jumps", "frames": [[40, 60]]}).json()
    motion = body["motions"][0]
    tokens = decode_array(motion["tokens"])
    kept = [t for t in range(20) if not 9 <= t < 16]  # frames 40:60: tokens 10-14 and one token of margin each side
    assert set(kept) <= set(motion["safety"]["hit_tokens"]) and motion["safety"]["flagged"]
    assert (tokens[kept, 0] == 0).all()
    checks = []  # the ids are checked once, at the request's boundary; the editor takes them as checked
    check = edit_module.check_base_tokens
    monkeypatch.setattr(edit_module, "check_base_tokens", lambda *a, **k: checks.append(1) or check(*a, **k))
    body = client.post("/v1/edit", json={"source": source, "prompt": "a person jumps", "frames": [[40, 60]]}).json()
    assert len(checks) == 1 and body["motions"][0]["safety"]["hit_tokens"] == motion["safety"]["hit_tokens"]
    for ids, says in ((removed[:19], "19 base_tokens for 80 frames"),
                      (np.full(20, NUM_CODES), f"base_tokens[0] is {NUM_CODES}; the model's base codes are 0-"),
                      (removed.astype(np.float32), "expected integer code ids"),
                      (removed.reshape(4, 5), "base_tokens have shape [4, 5]")):
        dtype = "float32" if ids.dtype == np.float32 else "int64"
        response = client.post("/v1/edit", json={"source": {**source, "base_tokens": encode_array(ids, dtype)},
                                                 "prompt": "a person jumps", "frames": [[40, 60]]})
        assert response.status_code == 422, response.text
        problem = response.json()["detail"][0]
        assert problem["field"] == "source.base_tokens" and says in problem["reason"], problem


def test_edit_endpoint_says_when_a_seam_stays_over_the_limit(client, monkeypatch):
    from safemotion.serve.encoding import decode_array

    # the tiny model's seams hold the served limit (0.119); one no seam can meet forces the warning
    editor = client.app.state.server.engine.service.editor
    monkeypatch.setattr(editor, "settings", EditSettings(seam_limit=1e-6, seam_retries=1))
    take = client.post("/v1/generate", json={"prompt": "a person walks", "seconds": 4.0, "seed": 1}).json()
    source = {"joints": take["motions"][0]["joints"], "fps": 20.0}
    body = client.post("/v1/edit", json={"source": source, "prompt": "a person jumps", "frames": [[20, 40]]}).json()
    seams = body["motions"][0]["seams"]
    assert seams["limit_m"] == 1e-6 and seams["tries"] == 1 and [s["frame"] for s in seams["seams"]] == [16, 44]
    joints = decode_array(body["motions"][0]["joints"])
    (start, end), = seam_pairs(joints, [(16, 44)], 8)
    assert [s["jump_m"] for s in seams["seams"]] == pytest.approx([start, end], abs=1e-6)
    assert [w.split(" jumps")[0] for w in seams["warnings"]] == ["the seam at frame 16", "the seam at frame 44"]
    assert all("over the limit of 1e-06 (still over after 1 re-sampling tries)" in w for w in seams["warnings"])


@pytest.mark.parametrize("change, field, says", [
    ({"frames": [[60, 100]]}, "frames", "outside the take"),
    ({"frames": [[10, 30], [20, 40]]}, "frames", "overlap"),
    ({"frames": [[10, 12]]}, "frames", "shorter than one token"),
    ({"frames": []}, "frames", "no frame span"),
    ({"frames": [[10, 30]], "extend_seconds": 1.0}, "body", "exactly one of"),
    ({"between": {"joints": None, "fps": 20.0}, "seconds": 1.0}, "between", "exactly one of"),
    ({"frames": [[10, 30]], "source": {"fps": 30.0}}, "source.fps", "30 fps but the model works at 20 fps"),
    ({"frames": [[10, 30]], "source": {"joints": None, "features": None}}, "source", "exactly one of"),
    ({"frames": [[10, 30]], "policy": "ignore"}, "policy", ""),
])
def test_edit_field_errors_name_the_field(client, change, field, says):
    from safemotion.serve.encoding import encode_array

    from safemotion.motion.skeleton import rest_joints

    standing = rest_joints()[None] + np.linspace(0, 1, 60)[:, None, None] * np.array([0.0, 0.0, 1.0])
    source = {"joints": encode_array(standing), "fps": 20.0}
    body = {"source": source, "prompt": "a person jumps", **change}
    if "source" in change:
        body["source"] = {**source, **change["source"]}
        body["source"] = {k: v for k, v in body["source"].items() if v is not None}
    response = client.post("/v1/edit", json=body)
    assert response.status_code == 422, response.text
    problems = response.json()["detail"]
    assert problems[0]["field"] == field and says in problems[0]["reason"], problems
