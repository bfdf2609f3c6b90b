"""Server API in-process (FastAPI TestClient on the real app and a tiny random LCR model): motions and their safety
records, validation at the boundary (422 naming the field, 400, 413), 429 on a full queue, the OpenAPI file, and the
micro-batcher on its own."""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from server_support import REMOVED_CODES, build_tiny_lcr_model
from sqlalchemy import event

from safemotion.motion import skeleton
from safemotion.serve import schemas
from safemotion.serve.app import create_app
from safemotion.serve.batcher import AUDIT, JOB, DeadlineExceeded, MicroBatcher, QueueFull
from safemotion.serve.encoding import decode_array, encode_array
from safemotion.serve.jobs import JobRunner, JobSettings
from safemotion.serve.model_service import AuditTask
from safemotion.serve.openapi import SCHEMA_FILE, schema_text
from safemotion.serve.settings import ServerSettings
from safemotion.serve.store import Store
from safemotion.unlearn.audit import check_audit_length

BODY_LIMIT = 64 * 1024
QUEUE = 2


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """Single-user server (loopback, no keys), one motion per batch and a 2-request queue so 429 is reachable."""
    root = tmp_path_factory.mktemp("server_api")
    model = build_tiny_lcr_model(root / "tiny-lcr")
    settings = ServerSettings(model=str(model), data_dir=root / "data", device="cpu", threads=1, max_batch=1,
                              max_queue=QUEUE, max_body_bytes=BODY_LIMIT)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def merged_spans(hits: list[int]) -> list[list[int]]:
    """Frame spans [4t, 4t + 4) of hit tokens, consecutive tokens merged."""
    spans: list[list[int]] = []
    for t in hits:
        if spans and spans[-1][1] == 4 * t:
            spans[-1][1] = 4 * t + 4
        else:
            spans.append([4 * t, 4 * t + 4])
    return spans


def generate(client, **fields):
    return client.post("/v1/generate", json={"prompt": "a person walks forward", **fields})


# ---------------------------------------------------------------------------------------------- motions

def test_generate_returns_compact_motions_with_skeleton_and_safety(client):
    response = generate(client, seconds=4.0, seed=0, variations=16)
    assert response.status_code == 200, response.text
    body = response.json()
    schemas.GenerateResponse.model_validate(body)  # what the OpenAPI schema promises
    assert body["model"] == "tiny-lcr" and body["policy"] == "sanitize"
    motions = body["motions"]
    assert [m["seed"] for m in motions] == list(range(16))
    assert [m["variation"] for m in motions] == list(range(16))
    decisions = set()
    for m in motions:
        assert m["frames"] == 80 and m["fps"] == 20.0 and m["seconds"] == 4.0 and m["length_from"] == "request"
        joints = decode_array(m["joints"])
        assert joints.dtype == np.float32 and joints.shape == (80, 22, 3) and np.isfinite(joints).all()
        assert m["joints"]["data"].isascii() and isinstance(m["joints"]["data"], str)
        assert decode_array(m["smpl"]["pose"]).shape == (80, 24, 3)
        assert decode_array(m["smpl"]["transl"]).shape == (80, 3)
        bones = m["skeleton"]
        assert bones["joint_names"] == list(skeleton.SMPL24_NAMES)
        assert bones["parents"] == list(skeleton.SMPL24_PARENTS)
        assert decode_array(bones["rest_joints"]).shape == (24, 3)
        assert bones["up"] == "+Y" and bones["units"] == "metres"
        tokens = decode_array(m["tokens"])
        assert tokens.shape == (20, 6)
        # the safety record is recomputable from the base tokens the server returned
        safety = m["safety"]
        hits = [t for t, code in enumerate(tokens[:, 0]) if code in REMOVED_CODES]
        assert safety["hit_tokens"] == hits
        assert safety["hit_ratio"] == pytest.approx(len(hits) / 20)
        assert safety["flagged"] == (safety["hit_ratio"] >= safety["threshold"])
        assert safety["decision"] == ("sanitized" if safety["flagged"] else "pass")
        assert safety["spans"] == merged_spans(hits)
        decisions.add(safety["decision"])
    assert decisions == {"sanitized", "pass"}, "the test model should give flagged and clean motions"


def test_variation_k_is_reproduced_by_seed_plus_k(client):
    many = generate(client, seconds=2.0, seed=40, variations=4).json()["motions"]
    one = generate(client, seconds=2.0, seed=43).json()["motions"][0]
    assert one["seed"] == many[3]["seed"] == 43
    np.testing.assert_array_equal(decode_array(one["tokens"]), decode_array(many[3]["tokens"]))
    np.testing.assert_allclose(decode_array(one["joints"]), decode_array(many[3]["joints"]), atol=1e-5)


def test_foot_cleanup_is_on_unless_the_request_turns_it_off(client):
    cleaned = generate(client, seconds=2.0, seed=5).json()["motions"][0]
    raw = generate(client, seconds=2.0, seed=5, foot_cleanup=False).json()["motions"][0]
    assert cleaned["foot_cleanup"] is True and raw["foot_cleanup"] is False
    np.testing.assert_array_equal(decode_array(cleaned["tokens"]), decode_array(raw["tokens"]))
    before, after = decode_array(raw["joints"]), decode_array(cleaned["joints"])
    assert not np.allclose(before, after)
    bones = lambda j: np.linalg.norm(j[:, 1:] - j[:, skeleton.SMPL22_PARENTS[1:]], axis=-1)  # noqa: E731
    np.testing.assert_allclose(bones(after), bones(before), atol=1e-3)
    assert fields_of(generate(client, foot_cleanup="no")) == ["foot_cleanup"]

    job = client.post("/v1/jobs", json={"items": [{"prompt": "a person walks forward", "seconds": 2.0, "seed": 5,
                                                   "foot_cleanup": False},
                                                  {"prompt": "a person walks forward", "seconds": 2.0, "seed": 5}]})
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    for _ in range(600):
        if client.get(f"/v1/jobs/{job_id}").json()["status"] == "done":
            break
        time.sleep(0.05)
    items = client.get(f"/v1/jobs/{job_id}/results").json()["items"]
    assert [item["motions"][0]["foot_cleanup"] for item in items] == [False, True]
    np.testing.assert_allclose(decode_array(items[0]["motions"][0]["joints"]), before, atol=1e-5)


def test_a_database_from_before_the_foot_cleanup_column_is_upgraded(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    Store(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:  # the job_items table as earlier versions created it, with a queued item
        conn.execute(text("ALTER TABLE job_items DROP COLUMN foot_cleanup"))
    engine.dispose()
    store = Store(url)
    store.create_job("a" * 32, "alice", "artist", "tiny", "sanitize",
                     [{"prompt": "walk", "seconds": None, "seed": 0, "variations": 1, "foot_cleanup": False}])
    with store.engine.begin() as conn:
        conn.execute(text("INSERT INTO job_items (job_id, idx, prompt, seed, variations, status, foot_cleanup) "
                          "VALUES (:job, 1, 'run', 0, 1, 'pending', NULL)"), {"job": "a" * 32})
    claimed = store.claim_items("tiny", "w1", 10, lease_s=30, max_attempts=3)
    assert [item.foot_cleanup for item in claimed] == [False, True]
    store.close()


def test_block_policy_withholds_flagged_motions_only(client):
    motions = generate(client, seconds=4.0, seed=0, variations=16, policy="block").json()["motions"]
    blocked = [m for m in motions if m["safety"]["flagged"]]
    clean = [m for m in motions if not m["safety"]["flagged"]]
    assert blocked and clean
    for m in blocked:
        assert m["safety"]["decision"] == "blocked" and m["safety"]["reason"].startswith("refused")
        assert m["joints"] is None and m["smpl"] is None and m["skeleton"] is None and m["tokens"] is None
    for m in clean:
        assert m["safety"]["decision"] == "pass" and decode_array(m["joints"]).shape == (80, 22, 3)


def test_single_user_mode_is_an_artist(client):
    refused = generate(client, seconds=2.0, policy="allow")
    assert refused.status_code == 403 and "safety-admin" in refused.json()["detail"]
    assert client.get("/v1/audit-log").status_code == 403
    entries = client.app.state.server.store.audit_entries(event="policy_refused")
    assert entries and entries[0]["username"] == "local" and entries[0]["decision"] == "refused"
    assert entries[0]["prompt"] == "a person walks forward"


def test_server_can_forbid_allow_for_everyone(client):
    settings = client.app.state.server.settings
    settings.forbid_allow = True
    try:
        refused = generate(client, seconds=2.0, policy="allow")
        policies = client.get("/v1/models").json()["models"][0]["policies"]
    finally:
        settings.forbid_allow = False
    assert refused.status_code == 403 and "forbids the 'allow' policy" in refused.json()["detail"]
    assert policies == ["sanitize", "block"]


def test_generations_are_audited(client):
    response = generate(client, seconds=2.0, seed=7, variations=2)
    assert response.status_code == 200
    rid = response.headers["x-request-id"]
    entries = client.app.state.server.store.audit_entries(event="generate")
    mine = sorted((e for e in entries if e["request_id"] == rid), key=lambda e: e["variation"])
    assert [(e["seed"], e["variation"]) for e in mine] == [(7, 0), (8, 1)]
    for entry, motion in zip(mine, response.json()["motions"]):
        assert entry["username"] == "local" and entry["model"] == "tiny-lcr" and entry["policy"] == "sanitize"
        assert entry["flagged"] == motion["safety"]["flagged"]
        assert entry["hit_ratio"] == pytest.approx(motion["safety"]["hit_ratio"])
        assert entry["decision"] == motion["safety"]["decision"]


def test_models_and_health(client):
    model = client.get("/v1/models").json()["models"][0]
    assert model["name"] == "tiny-lcr" and model["seconds_range"] == [0.5, 9.8] and model["precision"] == "fp32"
    assert model["unlearning"] == {"method": "lcr", "concept": "violence", "removed_base_codes": len(REMOVED_CODES)}
    assert model["policies"] == ["sanitize", "block", "allow"]
    schemas.ModelsResponse.model_validate(client.get("/v1/models").json())
    health = schemas.HealthResponse.model_validate(client.get("/v1/health").json()).model_dump()
    assert health["status"] == "ok" and health["auth"] == "single-user" and health["queue"]["max_batch"] == 1


def test_audit_reports_removed_code_timeline(client):
    motion = generate(client, seconds=4.0, seed=3).json()["motions"][0]
    report = client.post("/v1/audit", json={"joints": motion["joints"], "fps": 20.0})
    assert report.status_code == 200, report.text
    body = schemas.AuditResponse.model_validate(report.json()).model_dump()
    assert body["concept"] == "violence" and body["unit_length"] == 4
    assert body["num_tokens"] == body["frames"] // 4 and len(body["timeline"]) == int(np.ceil(body["seconds"]))
    assert body["hits"] == len(body["hit_tokens"]) and body["hit_ratio"] == pytest.approx(
        body["hits"] / body["num_tokens"])
    assert all(0 <= value <= 1 for value in body["timeline"])


# ---------------------------------------------------------------------------------------------- validation

def fields_of(response) -> list[str]:
    assert response.status_code == 422, response.text
    problems = response.json()["detail"]
    assert all(problem["reason"] for problem in problems)
    return [problem["field"] for problem in problems]


@pytest.mark.parametrize("body, field, says", [
    ({"prompt": ""}, "prompt", "at least 1 character"),
    ({"prompt": "   "}, "prompt", "blank"),
    ({"prompt": "x" * 301}, "prompt", "at most 300"),
    ({"prompt": "walk\nthen run"}, "prompt", "control character (U+000A) at position 4"),
    ({"prompt": "walk\u0007"}, "prompt", "control character"),
    ({"prompt": "walk", "seconds": 0.4}, "seconds", "greater than or equal to 0.5"),
    ({"prompt": "walk", "seconds": 9.81}, "seconds", "less than or equal to 9.8"),
    ({"prompt": "walk", "seconds": "4"}, "seconds", "valid number"),
    ({"prompt": "walk", "variations": 0}, "variations", "greater than or equal to 1"),
    ({"prompt": "walk", "variations": 17}, "variations", "less than or equal to 16"),
    ({"prompt": "walk", "variations": 2.0}, "variations", "valid integer"),
    ({"prompt": "walk", "seed": -1}, "seed", "greater than or equal to 0"),
    ({"prompt": "walk", "seed": 2**63}, "seed", "less than or equal to"),
    ({"prompt": "walk", "policy": "off"}, "policy", "'sanitize', 'block' or 'allow'"),
    ({"prompt": "walk", "model": "momask-xl"}, "model", "unknown model 'momask-xl'"),
    ({"prompt": "walk", "temperature": 2}, "temperature", "Extra inputs"),
    ({"seconds": 2.0}, "prompt", "Field required"),
])
def test_generate_field_errors_name_the_field(client, body, field, says):
    response = client.post("/v1/generate", json=body)
    assert fields_of(response) == [field]
    assert says in response.json()["detail"][0]["reason"]


def test_nan_seconds_is_refused(client):
    response = client.post("/v1/generate", content=b'{"prompt": "walk", "seconds": NaN}',
                           headers={"content-type": "application/json"})
    assert fields_of(response) == ["seconds"]


@pytest.mark.parametrize("items, field", [
    ([], "items"),
    ([{"prompt": "walk"}] * 257, "items"),
    ([{"prompt": "walk"}, {"prompt": "run", "seconds": 12.0}], "items.1.seconds"),
    ([{"prompt": "walk"}] * 3 + [{"prompt": "\x1b[31mred"}], "items.3.prompt"),
    ([{"prompt": "walk", "policy": "block"}], "items.0.policy"),
])
def test_job_field_errors_name_the_item(client, items, field):
    assert fields_of(client.post("/v1/jobs", json={"items": items})) == [field]


def joints_payload(frames: int = 30) -> dict:
    t = np.linspace(0, 1, frames)[:, None, None]
    joints = skeleton.rest_joints()[None] + 0.1 * np.sin(6 * t + np.arange(22)[None, :, None])
    return encode_array(joints)


@pytest.mark.parametrize("change, field", [
    (lambda j: {**j, "shape": [30, 21, 3]}, "joints.data"),
    (lambda j: {**j, "data": j["data"][:-4]}, "joints.data"),
    (lambda j: {**j, "data": "not base64!"}, "joints.data"),
    (lambda j: {**j, "dtype": "float16"}, "joints.dtype"),
    (lambda j: {**j, "shape": [30, 66]}, "joints.shape"),
    (lambda j: encode_array(np.zeros((1, 22, 3))), "joints.shape"),
    (lambda j: encode_array(np.full((30, 22, 3), np.nan)), "joints.data"),
    (lambda j: encode_array(np.full((30, 22, 3), 1e6)), "joints.data"),
])
def test_audit_array_errors_name_the_field(client, change, field):
    response = client.post("/v1/audit", json={"joints": change(joints_payload()), "fps": 20.0})
    assert fields_of(response) == [field]


def test_query_errors_name_the_parameter(client):
    assert fields_of(client.get("/v1/audit-log", params={"limit": 0})) == ["query.limit"]
    assert fields_of(client.get("/v1/audit-log", params={"since": "yesterday"})) == ["query.since"]
    assert fields_of(client.get(f"/v1/jobs/{'0' * 32}/results", params={"limit": 65})) == ["query.limit"]


def test_unknown_jobs_are_404(client):
    assert client.get(f"/v1/jobs/{'0' * 32}").status_code == 404
    assert client.get("/v1/jobs/not-a-job-id").status_code == 404
    assert client.delete(f"/v1/jobs/{'f' * 32}").status_code == 404


def test_malformed_json_is_400(client):
    response = client.post("/v1/generate", content=b'{"prompt": "walk", ', headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["detail"]


def test_oversized_bodies_are_413(client):
    big = json.dumps({"prompt": "walk", "pad": "x" * BODY_LIMIT}).encode()
    declared = client.post("/v1/generate", content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and str(BODY_LIMIT) in declared.json()["detail"]

    def chunks():  # no Content-Length: the limit applies to the bytes actually sent
        for start in range(0, len(big), 8192):
            yield big[start:start + 8192]

    streamed = client.post("/v1/generate", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413


def test_full_queue_answers_429_with_retry_after(client):
    def post(seed: int):
        return generate(client, seconds=9.8, seed=seed, variations=16)

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(post, range(12)))
    codes = sorted(r.status_code for r in responses)
    assert set(codes) == {200, 429}, codes
    assert codes.count(200) >= 1 and codes.count(429) >= 12 - QUEUE - 2
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1 and "queue is full" in response.json()["detail"]
    assert client.get("/v1/health").json()["queue"]["waiting"] == 0


def test_openapi_file_is_in_sync():
    committed = SCHEMA_FILE.read_text(encoding="utf-8")
    assert committed == schema_text(), "run `python -m safemotion.serve.openapi` and commit backend/openapi.json"
    paths = json.loads(committed)["paths"]
    assert {"/v1/generate", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/results", "/v1/audit",
            "/v1/models", "/v1/health", "/v1/audit-log"} <= set(paths)
    assert set(paths["/v1/jobs/{job_id}"]) == {"get", "delete"}


# ---------------------------------------------------------------------------------------------- micro-batcher

class GatedHandler:
    """A real handler that records each batch and holds the first one until released."""

    def __init__(self):
        self.batches: list[list[int]] = []
        self.gate = threading.Event()

    def __call__(self, tasks: list[int]) -> list[int]:
        self.batches.append(list(tasks))
        self.gate.wait(10)
        return [task * 10 for task in tasks]


@contextmanager
def held_batcher(**options):
    """(handler, batcher, first): a started MicroBatcher on a GatedHandler whose first batch, task 0, is running and
    held until handler.gate is set; stopped on exit."""
    handler = GatedHandler()
    batcher = MicroBatcher(handler, **options)
    batcher.start()
    try:
        first = batcher.submit(0)
        while not handler.batches:
            time.sleep(0.001)
        yield handler, batcher, first
    finally:
        batcher.stop()


def test_batcher_gathers_waiting_requests_up_to_max_batch():
    with held_batcher(max_batch=4, window_s=0.05, max_queue=100) as (handler, batcher, first):
        futures = [batcher.submit(i, size=2 if i == 5 else 1) for i in range(1, 9)]
        handler.gate.set()
        assert first.result(10) == 0 and [f.result(10) for f in futures] == [10 * i for i in range(1, 9)]
    # batch sizes in motions: 1, then 1+1+1+1, then 2+1+1 (task 5 counts 2), then the rest
    assert handler.batches == [[0], [1, 2, 3, 4], [5, 6, 7], [8]]
    assert batcher.batches == 4 and batcher.motions == 10


@pytest.mark.parametrize("field, value, message", [
    ("port", 0, "--port 0: must be 1-65535"),
    ("max_batch", 0, "--max-batch 0: must be 1-256"),
    ("precision", "fp16", "--precision 'fp16': choose fp32, bf16 or int8"),
])
def test_settings_name_the_bad_option(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ServerSettings(**{field: value}).validate()


# ---------------------------------------------------------------------------------------------- probe findings

def test_audit_work_is_bounded_after_resampling(client):
    """A small body at a tiny fps used to become hundreds of thousands of frames: fps and duration are bounded."""
    joints = encode_array(np.zeros((100, 22, 3), np.float32))
    low = client.post("/v1/audit", json={"joints": joints, "fps": 0.25})
    assert fields_of(low) == ["fps"] and "greater than or equal to 10" in low.json()["detail"][0]["reason"]
    # longer than 200 s: refused before resampling by the app (over HTTP in test_server_ray) and by the model service
    with pytest.raises(ValueError, match="2401 frames at 12 fps last 200.1 s; audits take at most 200 s"):
        client.app.state.server.engine.service.audit(AuditTask(np.zeros((2401, 22, 3)), 12.0))
    with pytest.raises(ValueError, match="fps 0.1 is outside 10-1000"):
        check_audit_length(10, 0.1, "a.npz")
    check_audit_length(4000, 20.0, "a.npz")  # exactly 200 s is allowed


def test_one_bad_audit_fails_only_itself(client):
    """Audits batched together: the one that cannot be encoded gets its error, the others their reports."""
    service = client.app.state.server.engine.service
    motion = generate(client, seconds=4.0, seed=3).json()["motions"][0]
    good = AuditTask(decode_array(motion["joints"]), 20.0)
    too_short = AuditTask(decode_array(motion["joints"])[:2], 20.0)
    results = service.run([good, too_short, good])
    assert isinstance(results[1], ValueError) and "too short" in str(results[1])
    assert results[0]["hit_ratio"] == results[2]["hit_ratio"] and results[0]["num_tokens"] > 0


def test_invalid_audit_is_a_quiet_422(client, caplog):
    """An audit the model cannot encode is the client's error: 422 on the joints, no ERROR record, no traceback."""
    motion = generate(client, seconds=4.0, seed=3).json()["motions"][0]
    short = encode_array(decode_array(motion["joints"])[:2])
    with caplog.at_level("INFO"):
        response = client.post("/v1/audit", json={"joints": short, "fps": 20.0})
    assert fields_of(response) == ["joints"] and "too short" in response.json()["detail"][0]["reason"]
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info]


def test_batcher_fails_only_the_task_whose_result_is_an_error():
    batcher = MicroBatcher(lambda tasks: [ValueError(f"bad {t}") if t < 0 else t for t in tasks], max_batch=4,
                           window_s=0.05)
    batcher.start()
    try:
        futures = [batcher.submit(task) for task in (1, -2, 3)]
        assert futures[0].result(10) == 1 and futures[2].result(10) == 3
        with pytest.raises(ValueError, match="bad -2"):
            futures[1].result(10)
    finally:
        batcher.stop()


def test_audits_wait_behind_generation_requests():
    with held_batcher(max_batch=1, window_s=0.0, max_queue=4) as (handler, batcher, _):
        audits = [batcher.submit(10 + i, kind=AUDIT) for i in range(2)]
        request = batcher.submit(1)
        handler.gate.set()
        assert request.result(10) == 10 and [a.result(10) for a in audits] == [100, 110]
    assert handler.batches == [[0], [1], [10], [11]]


def test_quota_of_queued_motions_answers_429(client):
    settings = client.app.state.server.settings
    settings.max_queued_motions = 3
    try:
        items = [{"prompt": f"a person sits {i}", "seconds": 1.0, "variations": 2} for i in range(2)]
        response = client.post("/v1/jobs", json={"items": items})
        assert response.status_code == 429 and "quota of 3" in response.json()["detail"]
        assert response.headers["retry-after"] == "60"
    finally:
        settings.max_queued_motions = 8192


def test_a_result_that_cannot_be_stored_fails_after_bounded_tries_then_work_resumes(client, tmp_path):
    """A SQLite database capped at its current size (PRAGMA max_page_count: a full disk, for SQLite) refuses the
    results: the item is computed at most max_attempts times, then fails with the reason; raising the cap again
    lets the next job finish."""
    service = client.app.state.server.engine.service
    store = Store(f"sqlite:///{tmp_path / 'full.db'}")
    cap = {"pages": None}

    @event.listens_for(store.engine, "connect")
    def _cap(connection, _record):  # noqa: ANN001
        if cap["pages"] is not None:
            connection.execute(f"PRAGMA max_page_count = {cap['pages']}")

    batcher = MicroBatcher(service.run, max_batch=4, window_s=0.0)
    computed = []

    def submit(task, size):
        computed.append(task.request.prompt)
        return batcher.submit(task, size=size, kind=JOB)

    runner = JobRunner(store, submit, service.name, JobSettings(in_flight=1, lease_s=1.0, max_attempts=3))
    store.create_job("a" * 32, "alice", "artist", service.name, "sanitize",
                     [{"prompt": "a person walks", "seconds": 4.0, "seed": 0, "variations": 1}])
    with store.engine.connect() as conn:
        cap["pages"] = conn.exec_driver_sql("PRAGMA page_count").scalar()
    store.engine.dispose()
    batcher.start()
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while store.get_job("a" * 32)["status"] != "done" and time.monotonic() < deadline:
            time.sleep(0.1)
        [item] = store.job_items("a" * 32)
        assert item["status"] == "failed", item
        assert "gave up after 3 attempts" in item["error"] and "full" in item["error"]
        assert len(computed) == 3
        cap["pages"] = None
        store.engine.dispose()
        store.create_job("b" * 32, "alice", "artist", service.name, "sanitize",
                         [{"prompt": "a person runs", "seconds": 2.0, "seed": 0, "variations": 1}])
        runner.wake()
        while store.get_job("b" * 32)["status"] != "done" and time.monotonic() < deadline + 60:
            time.sleep(0.1)
        assert store.job_items("b" * 32)[0]["status"] == "done" and len(computed) == 4
    finally:
        runner.stop()
        batcher.stop()
        store.close()
