"""Scale-out on Ray Serve (safemotion.serve.ray_app): a real local Ray instance on loopback (started once for this
module), the Serve application of the KubeRay path (2 replicas of the tiny model, each its own FastAPI ingress) and a
throwaway PostgreSQL database shared by both replicas. Generation, audits, requests that arrive during a batch
batching together, the local server's queue limit (429) and deadlines inside a replica, jobs spread over the
replicas, cancellation, a replica killed (by its actor) mid-job that loses and repeats nothing, and the API contract
fuzz of the single-process server, run against the replicas."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from itertools import islice

import httpx
import pytest
from server_support import all_results, build_tiny_lcr_model, free_port, run_cli, wait_for_job
from test_server_fuzz import EXAMPLES, OPERATIONS, VALID_BODIES, fuzz_operation, walking_joints

from safemotion.generate import GenerationRequest
from safemotion.serve import schemas
from safemotion.serve.batcher import DeadlineExceeded
from safemotion.serve.encoding import encode_array
from safemotion.serve.model_service import GenerationTask
from safemotion.serve.store import Store

ray = pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'safemotion[ray]')")
serve = pytest.importorskip("ray.serve")

pytest_plugins = ["postgres_support"]  # the postgres_cluster fixture

REPLICAS = 2
SLOW_ITEMS = 16  # 9.8 s motions: long enough to kill a replica in the middle
MAX_BATCH = 4
QUEUE = 8  # the one-replica application's max_queue


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory, postgres_cluster):
    """The Serve application on a fresh PostgreSQL database, with an artist and a safety-admin key."""
    from safemotion.serve.ray_app import APP_NAME, MODEL_DEPLOYMENT, build_app

    root = tmp_path_factory.mktemp("server_ray")
    model = build_tiny_lcr_model(root / "tiny-lcr")
    db = postgres_cluster.create_database()
    keys = {}
    for role, name in (("artist", "alice"), ("safety-admin", "sam")):
        status, out, err = run_cli("keys", "add", "--role", role, "--name", name, "--db", db)
        assert status == 0, err
        keys[name] = out.strip().splitlines()[-1]
    ray.init(num_cpus=REPLICAS + 1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        settings = {"model": str(model), "db_url": db, "replicas": REPLICAS, "max_batch": MAX_BATCH, "threads": 1,
                    "device": "cpu", "claim_lease_s": 3.0}
        serve.run(build_app(settings), name=APP_NAME, route_prefix="/")
        handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=APP_NAME)
        yield {"url": f"http://127.0.0.1:{port}", "keys": keys, "db": db, "handle": handle, "settings": settings}
    finally:
        serve.shutdown()
        ray.shutdown()


def client(ray_server, user: str) -> httpx.Client:
    return httpx.Client(base_url=ray_server["url"], timeout=120,
                        headers={"Authorization": f"Bearer {ray_server['keys'][user]}"})


def replicas(ray_server) -> dict[str, dict]:
    """Every running replica's actor name, process id and claim worker id, by actor name (a replacement replica
    loads the model first: allow a loaded machine 3 minutes)."""
    found: dict[str, dict] = {}
    deadline = time.monotonic() + 180
    while len(found) < REPLICAS and time.monotonic() < deadline:
        me = ray_server["handle"].whoami.remote().result()
        found[me["actor"]] = me
        time.sleep(0.05)  # not a busy loop while a replacement starts
    assert len(found) == REPLICAS, found
    return found


def job_rows(ray_server, job_id: str) -> tuple[list[dict], list[dict]]:
    """A job's item rows (with claims and attempts) and its audit-log rows, straight from the database."""
    store = Store(ray_server["db"])
    try:
        audited = [row for row in store.audit_entries(event="job_item", limit=10_000) if row["job_id"] == job_id]
        return store.job_items(job_id), audited
    finally:
        store.close()


def test_generate_and_audit_through_the_ingress(ray_server):
    alice = client(ray_server, "alice")
    health = alice.get("/v1/health").json()
    assert health["model"] == "tiny-lcr" and health["auth"] == "api-keys"
    response = alice.post("/v1/generate", json={"prompt": "a person walks", "seconds": 2.0, "seed": 7,
                                                "variations": 2})
    assert response.status_code == 200, response.text
    body = schemas.GenerateResponse.model_validate(response.json())
    assert [m.seed for m in body.motions] == [7, 8] and all(m.safety is not None for m in body.motions)
    audit = alice.post("/v1/audit", json={"joints": encode_array(walking_joints(60)), "fps": 20})
    assert audit.status_code == 200 and 0 <= audit.json()["hit_ratio"] <= 1
    refused = alice.post("/v1/audit", json={"joints": encode_array(walking_joints(4000)), "fps": 10})
    assert refused.status_code == 422 and "at most 200 s" in refused.json()["detail"][0]["reason"]
    assert alice.post("/v1/generate", json={"prompt": "\u200b\u200b"}).status_code == 422


@pytest.fixture
def one_replica(ray_server):
    """An application of one replica with a QUEUE-request queue, served at /one-replica: its deployment handle. Deleted
    after each test: its replica shares the database, so while it lives it also claims job items."""
    from safemotion.serve.ray_app import MODEL_DEPLOYMENT, build_app

    serve.run(build_app({**ray_server["settings"], "replicas": 1, "max_queue": QUEUE}), name="one-replica",
              route_prefix="/one-replica")
    try:
        yield serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name="one-replica")
    finally:
        serve.delete("one-replica")


def task(prompt: str, seconds: float, seed: int, variations: int = 1) -> GenerationTask:
    return GenerationTask(GenerationRequest(prompt, seconds, seed, variations), "sanitize")


def start_long_batch(handle):
    """A 16-motion request (a batch of its own) that keeps the replica's model busy: its response, once running."""
    slow = handle.generate.remote(task("a person runs in a circle", 9.8, 0, variations=16), 300)
    deadline = time.monotonic() + 60
    while not handle.whoami.remote().result()["busy"] and time.monotonic() < deadline:
        time.sleep(0.01)
    return slow


def test_requests_arriving_during_a_batch_wait_and_batch_together(one_replica):
    """A replica's micro-batcher forms its next batch only when its model is free: 8 requests sent 20 ms apart while
    a long batch runs make 2 batches of MAX_BATCH when it ends."""
    start = one_replica.whoami.remote().result()
    slow = start_long_batch(one_replica)
    quick = []
    for i in range(QUEUE):
        quick.append(one_replica.generate.remote(task("a person waves", 2.0, 10 + i), 300))
        time.sleep(0.02)
    assert one_replica.whoami.remote().result()["busy"], "the long batch ended before the requests arrived"
    assert len(slow.result()) == 16 and [r.result()[0]["seed"] for r in quick] == list(range(10, 10 + QUEUE))
    end = one_replica.whoami.remote().result()
    assert end["motions"] - start["motions"] == 16 + QUEUE
    assert end["batches"] - start["batches"] == 1 + QUEUE // MAX_BATCH


def test_replica_refuses_beyond_its_queue_and_drops_expired_requests(ray_server, one_replica):
    """Like the local server: with QUEUE requests waiting, more get 429 with Retry-After, and a request whose deadline
    passes while it waits fails (504 over HTTP) and never reaches the model."""
    start = one_replica.whoami.remote().result()
    slow = start_long_batch(one_replica)
    expired = one_replica.generate.remote(task("a person bows", 2.0, 99), 0.05)
    with pytest.raises(DeadlineExceeded):
        expired.result()
    api = httpx.Client(base_url=f"{ray_server['url']}/one-replica", timeout=120,
                       headers={"Authorization": f"Bearer {ray_server['keys']['alice']}"})
    extra = 4
    with ThreadPoolExecutor(QUEUE + extra) as pool:
        sent = [pool.submit(api.post, "/v1/generate", json={"prompt": "a person walks", "seconds": 2.0, "seed": i})
                for i in range(QUEUE + extra)]
        refused = [future.result() for future in islice(as_completed(sent), extra)]  # answered at once
        assert one_replica.whoami.remote().result()["busy"], "the long batch ended before the requests arrived"
        answered = [future.result() for future in sent]
    assert [r.status_code for r in refused] == [429] * extra
    assert all(int(r.headers["retry-after"]) >= 1 and "queue is full" in r.json()["detail"] for r in refused)
    assert sorted(r.status_code for r in answered) == [200] * QUEUE + [429] * extra
    assert len(slow.result()) == 16
    end = one_replica.whoami.remote().result()
    assert end["motions"] - start["motions"] == 16 + QUEUE  # the expired request was dropped


def test_api_served_outside_ray_calls_the_replicas(ray_server):
    """`safemotion serve --engine ray`: the app in this process (RayEngine) works on the replicas through their
    handle, with the replicas' refusals as the usual 422."""
    from fastapi.testclient import TestClient

    from safemotion.serve.app import create_app
    from safemotion.serve.ray_app import RayEngine
    from safemotion.serve.settings import ServerSettings

    app = create_app(ServerSettings(**ray_server["settings"], engine="ray"),
                     lambda settings, store: RayEngine(settings, store, ray_server["handle"]))
    with TestClient(app, headers={"Authorization": f"Bearer {ray_server['keys']['alice']}"}) as api:
        assert api.get("/v1/models").json()["models"][0]["name"] == "tiny-lcr"
        response = api.post("/v1/generate", json={"prompt": "a person walks", "seconds": 2.0, "seed": 3})
        assert response.status_code == 200 and response.json()["motions"][0]["seed"] == 3
        take = {"joints": encode_array(walking_joints(60)), "fps": 20}
        refused = api.post("/v1/edit", json={"source": take, "frames": [[60, 100]], "prompt": "a person jumps"})
        assert refused.status_code == 422 and "outside the take" in refused.json()["detail"][0]["reason"]


def test_job_items_spread_over_replicas_once_each(ray_server):
    alice = client(ray_server, "alice")
    prompts = [{"prompt": f"a person waves {i}", "seconds": 4.0, "seed": i} for i in range(12)]
    job = alice.post("/v1/jobs", json={"items": prompts}).json()
    status = wait_for_job(alice, job["id"], lambda s: s["status"] == "done", timeout=300)
    assert status["done"] == 12
    items = all_results(alice, job["id"])
    assert [item["motions"][0]["seed"] for item in items] == list(range(12))
    rows, audited = job_rows(ray_server, job["id"])
    workers = {row["claimed_by"] for row in rows}
    assert workers <= {r["worker"] for r in replicas(ray_server).values()} and len(workers) == REPLICAS
    assert [row["attempts"] for row in rows] == [1] * 12 and len(audited) == 12


def test_cancel_stops_the_replicas(ray_server):
    alice = client(ray_server, "alice")
    prompts = [{"prompt": f"a person jogs {i}", "seconds": 9.8, "seed": i} for i in range(40)]
    job = alice.post("/v1/jobs", json={"items": prompts}).json()
    wait_for_job(alice, job["id"], lambda s: s["done"] >= 1, timeout=300)
    cancelled = alice.delete(f"/v1/jobs/{job['id']}").json()
    assert cancelled["status"] == "cancelled"
    time.sleep(5)  # items running at the cancel finish on their replicas but are not stored
    status = alice.get(f"/v1/jobs/{job['id']}").json()
    assert status["status"] == "cancelled" and status["done"] + status["cancelled"] == 40 and status["done"] < 40
    rows, audited = job_rows(ray_server, job["id"])
    assert len(audited) == status["done"] == sum(row["status"] == "done" for row in rows)


def test_replica_killed_mid_job_loses_and_repeats_nothing(ray_server):
    alice = client(ray_server, "alice")
    before = replicas(ray_server)
    prompts = [{"prompt": f"a person dances {i}", "seconds": 9.8, "seed": 100 + i} for i in range(SLOW_ITEMS)]
    job = alice.post("/v1/jobs", json={"items": prompts}).json()
    wait_for_job(alice, job["id"], lambda s: s["done"] >= 2, timeout=300)
    rows, _ = job_rows(ray_server, job["id"])
    victim = next(iter(before.values()))
    finished_before = {row["idx"] for row in rows if row["status"] == "done"}
    held = {row["idx"] for row in rows if row["status"] == "pending" and row["claimed_by"] == victim["worker"]}
    ray.kill(ray.get_actor(victim["actor"], namespace="serve"))
    status = wait_for_job(alice, job["id"], lambda s: s["status"] == "done", timeout=400)
    assert status["done"] == SLOW_ITEMS and status["failed"] == 0
    items = all_results(alice, job["id"])
    assert [item["motions"][0]["seed"] for item in items] == [100 + i for i in range(SLOW_ITEMS)]
    rows, audited = job_rows(ray_server, job["id"])
    assert sorted(row["seed"] for row in audited) == [100 + i for i in range(SLOW_ITEMS)]  # stored once each
    assert all(rows[i]["attempts"] == 1 for i in finished_before)  # nothing finished was computed again
    assert {row["idx"] for row in rows if row["attempts"] > 1} <= held | {row["idx"] for row in rows
                                                                           if row["claimed_by"] == victim["worker"]}
    assert all(row["claimed_by"] != victim["worker"] or row["attempts"] == 1 for row in rows)
    after = replicas(ray_server)  # Serve replaced the killed replica
    assert victim["actor"] not in after and len(after) == REPLICAS


@pytest.mark.parametrize("path, method", [op for op in OPERATIONS if op[0] != "/v1/body-model"],
                         ids=[f"{m.upper()} {p}" for p, m in OPERATIONS if p != "/v1/body-model"])
def test_api_contract_on_the_ray_ingress(ray_server, path, method):
    sam = client(ray_server, "sam")
    job = sam.post("/v1/jobs", json=VALID_BODIES[("/v1/jobs", "post")])
    assert job.status_code == 202
    fuzz_operation(httpx.Client(base_url=ray_server["url"], timeout=120), ray_server["keys"]["sam"],
                   job.json()["id"], path, method, examples=EXAMPLES)
    sam.delete(f"/v1/jobs/{job.json()['id']}")
