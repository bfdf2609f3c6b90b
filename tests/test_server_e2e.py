"""The real server process (`python -m safemotion serve` on a free loopback port, tiny random LCR model, temp SQLite):
refusal of an unprotected public bind, keys and roles, generation, batch jobs with cancel, the audit log, JSON logs,
a crash in the middle of a job after which every item is finished exactly once, revocation cancelling queued `allow`
jobs, and a bundled server that exits when its parent process is gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import httpx
import numpy as np
import pytest
from server_support import (
    REPO_ROOT,
    ServerProcess,
    all_results,
    build_tiny_lcr_model,
    free_port,
    run_cli,
    safemotion_command,
    wait_for_job,
)

from safemotion.serve import schemas
from safemotion.serve.encoding import decode_array
from safemotion.serve.store import Store

SLOW_JOB_ITEMS = 24


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Model, data folder with an artist and a safety-admin key, and the running server."""
    root = tmp_path_factory.mktemp("server_e2e")
    model = build_tiny_lcr_model(root / "tiny-lcr")
    data = root / "data"
    keys = {}
    for role, name in (("artist", "alice"), ("safety-admin", "sam")):
        status, out, err = run_cli("keys", "add", "--role", role, "--name", name, "--data-dir", str(data))
        assert status == 0, err
        keys[name] = out.strip().splitlines()[-1]
        assert keys[name].startswith("smk_") and len(keys[name]) > 40
    server = ServerProcess(model, data, root / "server.log", "--max-batch", "8", "--claim-lease", "2")
    server.start()
    yield {"root": root, "model": model, "data": data, "keys": keys, "server": server}
    server.stop()


def client(setup, user: str | None) -> httpx.Client:
    headers = {} if user is None else {"Authorization": f"Bearer {setup['keys'].get(user, user)}"}
    return httpx.Client(base_url=setup["server"].url, headers=headers, timeout=60)


def test_public_bind_without_keys_refuses_to_start(tmp_path):
    status, _, err = run_cli("serve", "--host", "0.0.0.0", "--port", "1", "--data-dir", str(tmp_path / "empty"),
                             "--model", str(tmp_path / "no-model"))
    assert status == 2
    assert "refusing to listen on 0.0.0.0" in err and "safemotion keys add" in err


def test_keys_are_stored_hashed(setup):
    listed = json.loads(run_cli("keys", "list", "--data-dir", str(setup["data"]))[1])
    assert [(k["name"], k["role"], k["revoked"]) for k in listed] == [("alice", "artist", False),
                                                                      ("sam", "safety-admin", False)]
    database = b"".join(path.read_bytes() for path in setup["data"].glob("safemotion.db*"))
    for key in setup["keys"].values():
        assert key.encode() not in database and key[8:].encode() not in database


def test_requests_need_a_valid_key(setup):
    with client(setup, None) as anonymous:
        health = anonymous.get("/v1/health")
        assert health.status_code == 200 and health.json()["auth"] == "api-keys"
        missing = anonymous.post("/v1/generate", json={"prompt": "a person waves"})
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert anonymous.get("/v1/models").status_code == 401
    with client(setup, "smk_wrong-key") as wrong:
        response = wrong.post("/v1/generate", json={"prompt": "a person waves"})
        assert response.status_code == 401 and "not valid" in response.json()["detail"]
    # a revoked key stops working at once
    status, out, _ = run_cli("keys", "add", "--role", "artist", "--name", "temp", "--data-dir", str(setup["data"]))
    temporary = out.strip().splitlines()[-1]
    with client(setup, temporary) as http:
        assert http.get("/v1/models").status_code == 200
        assert run_cli("keys", "revoke", "temp", "--data-dir", str(setup["data"]))[0] == 0
        assert http.get("/v1/models").status_code == 401


def test_generate_over_http_with_json_logs(setup):
    with client(setup, "alice") as alice:
        response = alice.post("/v1/generate", json={"prompt": "a person waves", "seconds": 3.0, "seed": 5,
                                                    "variations": 2}, headers={"X-Request-ID": "e2e-generate-1"})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "e2e-generate-1"
    motions = response.json()["motions"]
    assert [m["seed"] for m in motions] == [5, 6]
    assert decode_array(motions[0]["joints"]).shape == (60, 22, 3)
    # the access line is logged once the response has gone out, so it may land a moment after the client has it
    deadline = time.monotonic() + 10
    while True:
        text = setup["server"].log_text()
        lines = [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]  # whole lines only
        access = [line for line in lines if line.get("request_id") == "e2e-generate-1" and line["message"] == "request"]
        if access or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert any(line["message"] == "ready" and line["model"] == "tiny-lcr" for line in lines)
    assert len(access) == 1
    assert access[0]["status"] == 200 and access[0]["user"] == "alice" and access[0]["path"] == "/v1/generate"


def test_only_safety_admins_may_allow(setup):
    request = {"prompt": "a person kicks", "seconds": 4.0, "seed": 0, "variations": 16}
    with client(setup, "alice") as alice, client(setup, "sam") as sam:
        refused = alice.post("/v1/generate", json={**request, "policy": "allow"})
        assert refused.status_code == 403 and "safety-admin" in refused.json()["detail"]
        allowed = sam.post("/v1/generate", json={**request, "policy": "allow"})
        sanitized = sam.post("/v1/generate", json=request)
    assert allowed.status_code == 200 and sanitized.status_code == 200
    changed = 0
    for a, s in zip(allowed.json()["motions"], sanitized.json()["motions"]):
        # same tokens and flags; motions that use removed codes decode differently with the original codebook
        np.testing.assert_array_equal(decode_array(a["tokens"]), decode_array(s["tokens"]))
        assert a["safety"]["hit_ratio"] == s["safety"]["hit_ratio"]
        assert a["safety"]["decision"] == ("allowed" if a["safety"]["flagged"] else "pass")
        same = np.allclose(decode_array(a["joints"]), decode_array(s["joints"]), atol=1e-6)
        assert same == (not a["safety"]["hit_tokens"])
        changed += not same
    assert changed > 0


def test_batch_job_and_cancel(setup):
    with client(setup, "alice") as alice, client(setup, "sam") as sam:
        small = alice.post("/v1/jobs", json={"items": [{"prompt": f"a person walks {i}", "seconds": 2.0, "seed": i}
                                                       for i in range(3)], "policy": "block"})
        assert small.status_code == 202 and small.json()["status"] == "queued" and small.json()["total"] == 3
        big = alice.post("/v1/jobs", json={"items": [{"prompt": "a person runs", "seconds": 9.8, "seed": i,
                                                      "variations": 4} for i in range(60)]})
        big_id = big.json()["id"]
        cancelled = alice.delete(f"/v1/jobs/{big_id}").json()
        assert cancelled["status"] == "cancelled" and cancelled["cancelled"] > 0
        assert cancelled["done"] + cancelled["cancelled"] + cancelled["failed"] == 60

        done = wait_for_job(alice, small.json()["id"], lambda s: s["status"] == "done")
        assert done["done"] == 3 and all(item["finished_at"] for item in done["items"])
        results = all_results(alice, done["id"])
        assert [item["index"] for item in results] == [0, 1, 2]
        for item in results:
            (motion,) = item["motions"]
            assert motion["safety"]["decision"] in ("pass", "blocked")
            assert (motion["joints"] is None) == (motion["safety"]["decision"] == "blocked")

        time.sleep(1.0)  # items that were already running when cancelled finish but are not stored
        after = alice.get(f"/v1/jobs/{big_id}").json()
        assert after["status"] == "cancelled" and after["done"] == cancelled["done"]
        assert sum(item["motions"] is not None for item in all_results(alice, big_id)) == cancelled["done"]
        assert alice.delete(f"/v1/jobs/{done['id']}").status_code == 409

        # artists see only their own jobs; safety admins see every job
        sams = sam.post("/v1/jobs", json={"items": [{"prompt": "a person sits", "seconds": 1.0}]}).json()["id"]
        assert alice.get(f"/v1/jobs/{sams}").status_code == 404
        assert sam.get(f"/v1/jobs/{big_id}").status_code == 200


def test_audit_log_for_safety_admins(setup):
    with client(setup, "alice") as alice, client(setup, "sam") as sam:
        assert alice.get("/v1/audit-log").status_code == 403
        entries = sam.get("/v1/audit-log", params={"user": "alice", "limit": 1000}).json()["entries"]
        schemas.AuditLogResponse.model_validate({"entries": entries, "next_before_id": None})
        flagged = sam.get("/v1/audit-log", params={"flagged": "true", "limit": 1000}).json()["entries"]
        future = sam.get("/v1/audit-log", params={"since": "2999-01-01T00:00:00Z"}).json()["entries"]
        page = sam.get("/v1/audit-log", params={"limit": 2}).json()
        older = sam.get("/v1/audit-log", params={"limit": 2, "before_id": page["next_before_id"]}).json()
    assert entries and {e["user"] for e in entries} == {"alice"}
    events = {e["event"] for e in entries}
    assert {"generate", "policy_refused", "job_item"} <= events
    refused = [e for e in entries if e["event"] == "policy_refused"]
    assert refused[0]["prompt"] == "a person kicks" and refused[0]["decision"] == "refused"
    waved = [e for e in entries if e["request_id"] == "e2e-generate-1"]
    assert sorted(e["seed"] for e in waved) == [5, 6] and all(e["model"] == "tiny-lcr" for e in waved)
    assert all(e["hit_ratio"] is not None and e["decision"] in ("pass", "sanitized") for e in waved)
    assert flagged and all(e["flagged"] for e in flagged)
    assert future == []
    assert len(page["entries"]) == 2 and older["entries"][0]["id"] < page["entries"][-1]["id"]


def test_restart_mid_job_finishes_every_item_exactly_once(setup):
    server = setup["server"]
    items = [{"prompt": f"a person dances {i}", "seconds": 9.8, "seed": 100 + i} for i in range(SLOW_JOB_ITEMS)]
    with client(setup, "alice") as alice:
        job_id = alice.post("/v1/jobs", json={"items": items}).json()["id"]
        before = wait_for_job(alice, job_id, lambda s: s["done"] >= 1)
        server.kill()  # a crash: no shutdown code runs
    assert before["done"] < SLOW_JOB_ITEMS, "the job finished before the crash; make it longer"
    finished_before = {item["index"]: item["finished_at"] for item in before["items"] if item["status"] == "done"}

    server.start()
    with client(setup, "alice") as alice, client(setup, "sam") as sam:
        after = wait_for_job(alice, job_id, lambda s: s["status"] == "done", timeout=90)
        results = all_results(alice, job_id)
        log = sam.get("/v1/audit-log", params={"event": "job_item", "limit": 1000}).json()["entries"]
        direct = alice.post("/v1/generate", json={**items[-1]}).json()["motions"][0]
    assert after["done"] == SLOW_JOB_ITEMS and after["pending"] == after["failed"] == 0
    assert [item["index"] for item in results] == list(range(SLOW_JOB_ITEMS))
    assert all(item["status"] == "done" and len(item["motions"]) == 1 for item in results)
    assert [item["motions"][0]["seed"] for item in results] == [100 + i for i in range(SLOW_JOB_ITEMS)]
    # items finished before the crash were not recomputed
    for index, finished_at in finished_before.items():
        assert after["items"][index]["finished_at"] == finished_at
    # each item was stored (and audited) exactly once
    audited = sorted(e["seed"] for e in log if e["job_id"] == job_id)
    assert audited == [100 + i for i in range(SLOW_JOB_ITEMS)]
    # a job item equals the same request generated directly
    last = results[-1]["motions"][0]
    np.testing.assert_array_equal(decode_array(last["tokens"]), decode_array(direct["tokens"]))
    np.testing.assert_allclose(decode_array(last["joints"]), decode_array(direct["joints"]), atol=1e-5)


def test_revoking_a_safety_admin_cancels_its_queued_allow_jobs(tmp_path):
    data = tmp_path / "data"
    assert run_cli("keys", "add", "--role", "safety-admin", "--name", "sam", "--data-dir", str(data))[0] == 0
    store = Store(f"sqlite:///{data / 'safemotion.db'}")
    try:
        store.create_job("a" * 32, "sam", "safety-admin", "tiny", "allow", [
            {"prompt": "a person walks", "seconds": 2.0, "seed": 0, "variations": 1}])
        status, out, _ = run_cli("keys", "revoke", "sam", "--data-dir", str(data))
        assert status == 0 and "cancelled its 1 queued 'allow' job(s)" in out
        assert store.get_job("a" * 32)["status"] == "cancelled"
    finally:
        store.close()


def test_bundled_server_exits_when_its_parent_is_gone(setup, tmp_path):
    """A `sh` parent starts the server with --parent-pid of itself, then is killed: the server shuts down."""
    model = setup["server"].args[setup["server"].args.index("--model") + 1]
    port = free_port()
    command = " ".join(safemotion_command("serve", "--host", "127.0.0.1", "--port", str(port), "--model", model,
                                          "--data-dir", str(tmp_path / "data"), "--device", "cpu", "--threads", "1"))
    parent = subprocess.Popen(["sh", "-c", f'{command} --parent-pid $$ > "{tmp_path}/server.log" 2>&1 & '
                                           'echo $!; wait'], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    server_pid = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and os.path.exists(f"/proc/{server_pid}") and \
                "zombie" not in open(f"/proc/{server_pid}/status").read().lower():
            time.sleep(0.2)
        assert not os.path.exists(f"/proc/{server_pid}") or "zombie" in open(f"/proc/{server_pid}/status").read()
        assert "parent process ended" in (tmp_path / "server.log").read_text()
    finally:
        try:
            os.kill(server_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
