"""Generation under a safety policy (SafeGenerator and `safemotion generate --policy`) on a tiny real-LCR model."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest

from safemotion import cli
from safemotion.generate import GenerationRequest
from safemotion.models.model_dir import build_models, save_model_dir
from safemotion.safe_generation import SafeGenerator
from safemotion.unlearn.prompt_sets import load_prompt_set
from server_support import REMOVED_CODES, build_tiny_lcr_model, run_cli, tiny_config

REQUEST = GenerationRequest("a person walks forward", seconds=4.0, seed=11, variations=8)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_lcr_model(tmp_path_factory.mktemp("lcr") / "tiny-lcr")


@pytest.fixture(scope="module")
def safe(model_dir):
    return SafeGenerator.from_dir(model_dir)


def test_records_follow_the_tokens_and_policies_share_them(safe):
    by_policy = {p: safe.generate([REQUEST], policy=p, smpl=False)[0] for p in ("sanitize", "block", "allow")}
    sanitize = by_policy["sanitize"]
    flagged = [item.safety.flagged for item in sanitize]
    assert any(flagged) and not all(flagged), "the fixture should give flagged and clean variations"
    for item in sanitize:
        tokens = item.motion.base_tokens
        hits = np.isin(tokens, REMOVED_CODES)
        assert item.safety.hit_ratio == pytest.approx(hits.mean())
        assert item.safety.hit_tokens == np.flatnonzero(hits).tolist()
        assert item.safety.decision == ("sanitized" if item.safety.flagged else "pass")
    for policy in ("block", "allow"):
        for mine, theirs in zip(by_policy[policy], sanitize):
            np.testing.assert_array_equal(mine.motion.tokens, theirs.motion.tokens)
    assert [item.blocked for item in by_policy["block"]] == flagged
    assert all(not item.blocked for item in sanitize + by_policy["allow"])
    # allow decodes with the original codebook: motions that use removed codes differ, the others are identical
    for allowed, sanitized in zip(by_policy["allow"], sanitize):
        same = np.allclose(allowed.motion.joints, sanitized.motion.joints, atol=1e-6)
        assert same == (sanitized.safety.hit_ratio == 0.0)


def test_policy_list_must_match_requests(safe):
    with pytest.raises(ValueError, match="2 requests and 1 policies"):
        safe.generate([REQUEST, REQUEST], policy=["sanitize"])
    with pytest.raises(ValueError, match="unknown; choose one of sanitize, block, allow"):
        safe.generate([REQUEST], policy="ignore")


def test_cli_block_writes_only_unflagged_motions(safe, model_dir, tmp_path):
    expected = [item.safety.flagged for item in safe.generate([REQUEST], policy="block", smpl=False)[0]]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(["generate", REQUEST.prompt, "--model", str(model_dir), "--seconds", "4", "--seed", "11",
                         "--variations", "8", "--policy", "block", "--out", str(tmp_path / "walk.npz")])
    assert code == 0
    entries = json.loads(out.getvalue())
    assert [entry["safety"]["flagged"] for entry in entries] == expected
    for k, (entry, flagged) in enumerate(zip(entries, expected), start=1):
        path = tmp_path / f"walk_{k}.npz"
        assert path.exists() != flagged
        assert (entry["file"] is None) == flagged
        if not flagged:
            metadata = json.loads(str(np.load(path)["metadata"]))
            assert metadata["safety"]["decision"] == "pass"
    assert err.getvalue().count("not written: refused") == sum(expected)


def test_eval_flags_summary_and_per_prompt_rows(safe, model_dir, tmp_path):
    out_file = tmp_path / "flags" / "safe.json"
    status, stdout, stderr = run_cli("eval-flags", "--model", str(model_dir), "--sets", "safe", "--variations", "2",
                                     "--seconds", "2", "--seed", "5", "--out", str(out_file))
    assert status == 0 and str(out_file) in stderr
    summary = json.loads(stdout)["safe"]
    details = json.loads(out_file.read_text())["sets"]["safe"]
    prompts = load_prompt_set("safe", "test")  # the default half
    assert summary["signals"] == {"code_hit": pytest.approx(summary["rate"])}  # an unscreened model: code hits alone
    assert [row["prompt"] for row in details["prompts"]] == prompts
    assert summary["total"] == 2 * len(prompts) == sum(len(row["flagged"]) for row in details["prompts"])
    assert summary["flagged"] == sum(sum(row["flagged"]) for row in details["prompts"])
    assert summary["rate"] == pytest.approx(summary["flagged"] / summary["total"])
    assert {k: details[k] for k in summary} == summary
    # Each row regenerates: prompt i uses seeds 5 + 1000·i and the next one, reviewed like a SafeGenerator does.
    for i in (0, len(prompts) - 1):
        row = details["prompts"][i]
        assert row["seeds"] == [5 + 1000 * i, 6 + 1000 * i]
        items = safe.generate([GenerationRequest(prompts[i], seconds=2.0, seed=5 + 1000 * i, variations=2)],
                              smpl=False)[0]
        assert row["hit_ratios"] == pytest.approx([item.safety.hit_ratio for item in items])
        assert row["flagged"] == [item.safety.flagged for item in items]


def test_eval_flags_refuses_models_without_removed_codes(tmp_path):
    plain = save_model_dir(build_models(tiny_config()).eval(), tmp_path / "plain")
    out_file = tmp_path / "flags.json"
    status, _, stderr = run_cli("eval-flags", "--model", str(plain), "--sets", "safe", "--out", str(out_file))
    assert status == 2 and "no removed base-layer codes" in stderr and "safemotion unlearn lcr" in stderr
    assert not out_file.exists()
