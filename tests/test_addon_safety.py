"""The auditor's side of the add-on against a real key-protected `safemotion serve` (tiny random LCR model): the
Allow policy is offered only once Check Connection finds that the server grants it to the configured key (a
safety-admin key), never to an artist's key or the bundled server; allowed, blocked and audited decisions all reach
the Safety list and the report. Also: the client-side prompt limits and the submission from the first timer tick."""

from __future__ import annotations

import csv
import json
import time

import pytest

bpy = pytest.importorskip("bpy")
server_support = pytest.importorskip("server_support")  # the backend (torch, safemotion)

from addon_support import addon, clean_scene, select, use_server  # noqa: E402,F401 (fixtures)

PROMPT = "a person walks forward"
FLAGGED_SEED = 9  # with the tiny model, "a person walks forward", 4 s, seed 9 is flagged (see test_addon_generate)


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    """A server that needs keys: an artist's and a safety admin's."""
    root = tmp_path_factory.mktemp("addon_keyed_server")
    model = server_support.build_tiny_lcr_model(root / "tiny-lcr")
    keys = {}
    for role, name in (("artist", "alice"), ("safety-admin", "sam")):
        status, out, err = server_support.run_cli("keys", "add", "--role", role, "--name", name, "--data-dir",
                                                  str(root / "data"))
        assert status == 0, err
        keys[name] = out.strip().splitlines()[-1]
    server = server_support.ServerProcess(model, root / "data", root / "server.log", "--max-batch", "8")
    server.start()
    yield server, keys
    server.stop()


def policies(settings) -> list[str]:
    return [item.identifier for item in settings.bl_rna.properties["policy"].enum_items]


def test_allow_is_offered_only_where_the_server_grants_it(addon, clean_scene, keyed_server, tmp_path):
    server, keys = keyed_server
    settings = clean_scene.safemotion
    settings.prompt, settings.seconds, settings.random_seed, settings.seed = PROMPT, 4.0, False, FLAGGED_SEED

    use_server(server.url, keys["alice"])  # an artist's key
    assert bpy.ops.safemotion.check_connection() == {"FINISHED"}
    assert not addon.preferences.allow_granted(bpy.context)
    with pytest.raises(TypeError):
        settings.policy = "ALLOW"

    use_server(server.url, keys["sam"])  # a safety admin's key: Check Connection finds the grant
    assert not addon.preferences.allow_granted(bpy.context)  # not until checked
    assert bpy.ops.safemotion.check_connection() == {"FINISHED"}
    assert addon.preferences.allow_granted(bpy.context)
    settings.policy = "ALLOW"
    assert bpy.ops.safemotion.generate() == {"FINISHED"}
    take = settings.takes[0]
    assert (take.safety.decision, take.safety.flagged) == ("allowed", True)
    select(take.armature)
    assert bpy.ops.safemotion.audit_action() == {"FINISHED"}

    settings.policy = "BLOCK"
    assert bpy.ops.safemotion.generate() == {"CANCELLED"}  # the same flagged seed, now blocked

    entries = [(e.event, e.policy, e.safety.decision, e.seed) for e in settings.flagged]
    assert entries == [("generation", "allow", "allowed", FLAGGED_SEED), ("audit", "", "audited", 0),
                       ("generation", "block", "blocked", FLAGGED_SEED)]
    audit = settings.flagged[1]
    assert audit.prompt == PROMPT and audit.note.startswith("At generation")
    assert ("the take was allowed as it is" in audit.note) == audit.safety.flagged
    out = tmp_path / "report.csv"
    assert bpy.ops.safemotion.export_safety_report(filepath=str(out)) == {"FINISHED"}
    rows = list(csv.DictReader(out.open(newline="", encoding="utf-8")))
    assert [r["decision"] for r in rows] == ["allowed", "audited", "blocked"]
    assert [d["decision"] for d in json.loads(out.with_suffix(".json").read_text())["decisions"]] == [
        "allowed", "audited", "blocked"]
    print(f"\nreport with an allowed take: {out}\n" + out.read_text(encoding="utf-8"))

    use_server(server.url, keys["alice"])  # back to the artist: the grant does not carry over
    assert not addon.preferences.allow_granted(bpy.context)
    settings.policy = "SANITIZE"
    with pytest.raises(TypeError):
        settings.policy = "ALLOW"


def test_prompts_the_server_would_refuse_are_refused_before_sending(addon, clean_scene):
    use_server("http://127.0.0.1:9")  # nothing listens: a request would fail differently
    settings = clean_scene.safemotion
    settings.prompt = "x" * 301
    with pytest.raises(RuntimeError, match="Prompt: prompt has 301 characters; shorten it to at most 300"):
        bpy.ops.safemotion.generate()
    settings.prompt = "a person\twalks"
    with pytest.raises(RuntimeError, match=r"control character \(U\+0009\) at position 9"):
        bpy.ops.safemotion.generate()


def test_the_modal_generate_submits_from_its_request_thread(addon, clean_scene, keyed_server):
    """invoke() returns to the UI before anything is answered; the timer ticks pick up the job id once it is."""
    server, keys = keyed_server
    use_server(server.url, keys["alice"])
    settings = clean_scene.safemotion
    settings.prompt, settings.seconds, settings.random_seed = PROMPT, 1.0, False
    ops_generate = addon.ops_generate
    job = ops_generate.GenerationJob(bpy.context)
    job.start(bpy.context)
    try:
        assert job.state == job.SUBMITTING and job.job_id == "" and settings.status.startswith("Sending")
        assert not bpy.ops.safemotion.batch_generate.poll()  # one guard: nothing else writes meanwhile
        deadline = time.monotonic() + 30
        while job.state == job.SUBMITTING and time.monotonic() < deadline:
            assert job.step(bpy.context) is False
            time.sleep(0.02)
        assert job.state == job.RUNNING and job.job_id and settings.job_id == job.job_id
    finally:
        job.cancel()
    assert addon.scene_guard.busy_reason(clean_scene) is None


@pytest.mark.parametrize(("decision", "flagged", "audit_flagged", "expected"), [
    ("sanitized", True, False, "They agree: both say the take is clean."),
    ("sanitized", True, True, "They differ because the two checks read different things"),
    ("pass", False, False, "They agree: both say the take is clean."),
    ("pass", False, True, "They differ because the two checks read different things"),
    ("allowed", True, True, "They agree: the take was allowed as it is, and the audit finds it too."),
    ("allowed", True, False, "They differ because the audit encodes the finished motion afresh"),
])
def test_the_record_says_why_a_take_and_its_audit_agree_or_differ(addon, decision, flagged, audit_flagged, expected):
    generation = {"decision": decision, "flagged": flagged, "hit_ratio": 0.26, "threshold": 0.21}
    audit = {"flagged": audit_flagged, "hit_ratio": 0.26 if audit_flagged else 0.1, "threshold": 0.23}
    note = addon.safety.compare_text(generation, audit)
    assert note.startswith("At generation 26% of the model's own tokens used removed codes (generation limit 21%)")
    assert f"audit limit 23%, so it is {'flagged' if audit_flagged else 'passed'}" in note and expected in note
