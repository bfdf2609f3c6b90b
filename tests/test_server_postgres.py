"""The server's database on PostgreSQL (a throwaway cluster from postgres_support; skipped where PostgreSQL or psycopg
is missing). The store tests also run on SQLite, so both back-ends are held to the same behaviour: API keys stored
only as hashes, jobs and items through their states, audit rows, reopening after a restart, concurrent finishing and
cancelling (which deadlocked on PostgreSQL), servers starting together on a fresh database. Then a real
`safemotion serve --db postgresql+psycopg://...` is killed mid-job and restarted: every item finishes exactly once."""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from server_support import ServerProcess, all_results, build_tiny_lcr_model, run_cli, wait_for_job
from sqlalchemy import inspect, select
from sqlalchemy.engine import make_url

from safemotion.serve.auth import create_key, hash_key
from safemotion.serve.schemas import MAX_SEED
from safemotion.serve.store import AuditEntry, QuotaExceeded, Store, api_keys, audit_log

SLOW_JOB_ITEMS = 24
LONG_REQUEST_ID = "r" * 64  # the longest X-Request-ID the server accepts
LONG_MODEL = "m" * 255  # the longest folder name, so the longest served model name

pytest_plugins = ["postgres_support"]  # the postgres_cluster and postgres_url fixtures


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    """A fresh database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(url):
    store = Store(url)
    yield store
    store.close()


def items(count: int, seed: int = 0) -> list[dict]:
    return [{"prompt": f"a person walks {i}", "seconds": 2.0, "seed": seed + i, "variations": 1}
            for i in range(count)]


def claim(store: Store, worker: str = "w", limit: int = 10, lease_s: float = 30, max_attempts: int = 3) -> list:
    return store.claim_items("tiny", worker, limit, lease_s, max_attempts)


def job_audit(store: Store, job_id: str) -> list[dict]:
    return [row for row in store.audit_entries(event="job_item", limit=10_000) if row["job_id"] == job_id]


def entry(job_id: str | None = None, **fields) -> AuditEntry:
    return AuditEntry(**{"username": "alice", "role": "artist", "event": "job_item", "model": "tiny",
                         "job_id": job_id, **fields})


# ---------------------------------------------------------------------------------------------- store

def test_api_keys_are_stored_only_as_hashes(store):
    key, record = create_key(store, "alice", "artist")
    admin_key, _ = create_key(store, "sam", "safety-admin")
    with pytest.raises(ValueError, match="already exists"):
        create_key(store, "alice", "safety-admin")
    found, stored_hash = store.find_key(hash_key(key))
    assert found == record and stored_hash == hash_key(key) and len(stored_hash) == 64
    assert store.find_key(hash_key(key + "x")) is None
    with store.engine.connect() as conn:
        stored = " ".join(str(value) for row in conn.execute(select(api_keys)) for value in row)
    for secret in (key, admin_key):
        assert secret not in stored and secret[8:] not in stored
    assert store.revoke_key("alice") and not store.revoke_key("alice")
    assert store.find_key(hash_key(key)) is None and store.has_keys()
    assert [(k.name, k.revoked_at is not None) for k in store.list_keys()] == [("alice", True), ("sam", False)]
    assert store.revoke_key("sam") and not store.has_keys() and store.has_keys(include_revoked=True)


def test_job_items_and_audit_rows(store):
    store.create_job("a" * 32, "alice", "artist", LONG_MODEL, "block",
                     [*items(2), {"prompt": "a person sits", "seconds": None, "seed": MAX_SEED, "variations": 16}])
    store.create_job("b" * 32, "sam", "safety-admin", LONG_MODEL, "allow", items(2, seed=50))
    job = store.get_job("a" * 32)
    assert job["status"] == "queued" and job["total"] == 3 and job["model"] == LONG_MODEL
    assert job["counts"] == {"pending": 3, "done": 0, "failed": 0, "cancelled": 0}
    assert store.get_job("c" * 32) is None

    pending = store.claim_items(LONG_MODEL, "w1", 4, lease_s=30, max_attempts=3)  # two owners: two items each
    assert [(p.job_id[0], p.index) for p in pending] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert (pending[2].policy, pending[2].owner, pending[2].role) == ("allow", "sam", "safety-admin")
    [last] = store.claim_items(LONG_MODEL, "w2", 4, lease_s=30, max_attempts=3)
    assert (last.index, last.seed, last.seconds, last.variations) == (2, MAX_SEED, None, 16)
    assert store.claim_items(LONG_MODEL, "w2", 4, lease_s=30, max_attempts=3) == []
    assert store.claim_items("another-model", "w1", 4, lease_s=30, max_attempts=3) == []

    motions = json.dumps([{"seed": MAX_SEED - 1, "joints": None}])
    audited = [entry("a" * 32, seed=MAX_SEED - k, variation=k, flagged=bool(k), hit_ratio=0.125 * k,
                     decision="blocked" if k else "pass", model=LONG_MODEL, request_id=LONG_REQUEST_ID)
               for k in range(2)]
    assert store.finish_item("a" * 32, 2, motions, audited)
    assert not store.finish_item("a" * 32, 2, "[]", audited)  # stored once, audited once
    assert store.get_job("a" * 32)["status"] == "running"
    assert store.fail_item("a" * 32, 1, "the model failed")
    assert store.finish_item("a" * 32, 0, "[]", [entry("a" * 32, seed=0)])
    job = store.get_job("a" * 32)
    assert job["status"] == "done" and job["counts"] == {"pending": 0, "done": 2, "failed": 1, "cancelled": 0}
    assert job["updated_at"] >= job["created_at"]

    rows = store.job_items("a" * 32)
    assert [(r["idx"], r["status"], r["error"]) for r in rows] == [(0, "done", None), (1, "failed", "the model failed"),
                                                                    (2, "done", None)]
    assert all(isinstance(r["finished_at"], float) and "result" not in r for r in rows)
    page = store.item_results("a" * 32, start=1, limit=5)
    assert [(r["idx"], r["result"]) for r in page] == [(1, None), (2, motions)]

    log = sorted(job_audit(store, "a" * 32), key=lambda row: row["id"])
    assert [row["seed"] for row in log] == [MAX_SEED, MAX_SEED - 1, 0]
    first, second, _ = log
    assert (first["flagged"], first["hit_ratio"], first["decision"]) == (False, 0.0, "pass")
    assert (second["flagged"], second["hit_ratio"], second["decision"]) == (True, 0.125, "blocked")
    assert first["request_id"] == LONG_REQUEST_ID and first["model"] == LONG_MODEL


def test_cancel_keeps_finished_items(store):
    store.create_job("a" * 32, "alice", "artist", "tiny", "sanitize", items(4))
    assert store.finish_item("a" * 32, 0, "[]", [entry("a" * 32)])
    assert store.cancel_job("a" * 32) and not store.cancel_job("a" * 32)
    assert not store.finish_item("a" * 32, 1, "[]", [entry("a" * 32)])  # was running when cancelled: not stored
    job = store.get_job("a" * 32)
    assert job["status"] == "cancelled" and job["counts"] == {"pending": 0, "done": 1, "failed": 0, "cancelled": 3}
    assert claim(store) == [] and len(job_audit(store, "a" * 32)) == 1


def test_two_servers_never_claim_one_item(store):
    """Four workers claim one job's 40 items at once, a few at a time: every item is claimed exactly once."""
    store.create_job("a" * 32, "alice", "artist", "tiny", "sanitize", items(40))
    barrier = threading.Barrier(4)

    def worker(name: str) -> list[int]:
        barrier.wait()
        got = []
        while batch := claim(store, name, limit=3):
            got += [item.index for item in batch]
        return got

    with ThreadPoolExecutor(4) as pool:
        claimed = list(pool.map(worker, ["w0", "w1", "w2", "w3"]))
    every = sorted(index for got in claimed for index in got)
    assert every == list(range(40))
    assert all(row["attempts"] == 1 for row in store.job_items("a" * 32))


def test_a_dead_servers_claims_run_out_and_it_cannot_store_them(store):
    store.create_job("a" * 32, "alice", "artist", "tiny", "sanitize", items(2))
    assert [item.index for item in claim(store, "dead", lease_s=60)] == [0, 1]
    assert claim(store, "live", lease_s=60) == []  # claimed, lease not over
    time.sleep(0.05)  # longer than the 10 ms lease below; the 60 s one above outlasts any slow machine
    assert store.renew_claims("alive-elsewhere") == 0
    assert [item.index for item in claim(store, "live", lease_s=0.01)] == [0, 1]
    assert not store.finish_item("a" * 32, 0, "[]", [entry("a" * 32)], worker="dead")  # lost its claim
    assert store.finish_item("a" * 32, 0, "[]", [entry("a" * 32)], worker="live")
    assert [row["attempts"] for row in store.job_items("a" * 32)] == [2, 2]
    store.release_claims("live")  # a clean stop gives item 1 back without counting the attempt
    [again] = claim(store, "next")
    assert again.index == 1 and store.job_items("a" * 32)[1]["attempts"] == 2


def test_items_fail_once_their_attempts_are_used_up(store):
    store.create_job("a" * 32, "alice", "artist", "tiny", "sanitize", items(1))
    for attempt in range(2):
        [item] = claim(store, f"w{attempt}", max_attempts=2)
        store.release_item(item.job_id, item.index, f"w{attempt}", "the result could not be stored: disk full")
    assert claim(store, "w2", max_attempts=2) == []
    [row] = store.job_items("a" * 32)
    assert row["status"] == "failed" and "gave up after 2 attempts" in row["error"] and "disk full" in row["error"]
    assert store.get_job("a" * 32)["status"] == "done"


def test_claims_are_shared_fairly_between_owners(store):
    """One artist queues three big jobs, another one small job: the small one is served in the first claims."""
    for k in range(3):
        store.create_job(f"{k:032x}", "alice", "artist", "tiny", "sanitize", items(50))
    store.create_job("b" * 32, "bob", "artist", "tiny", "sanitize", items(1))
    first = claim(store, "w", limit=4)
    assert sorted(item.owner for item in first) == ["alice", "alice", "alice", "bob"]
    # bob's next job goes first (alice has more items running), then they take turns
    store.create_job("c" * 32, "bob", "artist", "tiny", "sanitize", items(2))
    assert [item.owner for item in claim(store, "w", limit=2)] == ["bob", "alice"]


def test_per_owner_quota_of_queued_motions(store):
    store.create_job("a" * 32, "alice", "artist", "tiny", "sanitize", items(3), max_queued_motions=4)
    with pytest.raises(QuotaExceeded, match="'alice' already has 3 motions queued.*quota of 4"):
        store.create_job("b" * 32, "alice", "artist", "tiny", "sanitize", items(2), max_queued_motions=4)
    assert store.get_job("b" * 32) is None and store.queued_motions("alice") == 3
    store.create_job("c" * 32, "bob", "artist", "tiny", "sanitize", items(4), max_queued_motions=4)  # own quota
    store.cancel_job("a" * 32)
    store.create_job("b" * 32, "alice", "artist", "tiny", "sanitize", items(2), max_queued_motions=4)


def test_cancel_jobs_of_an_owner_by_policy(store):
    store.create_job("a" * 32, "sam", "safety-admin", "tiny", "allow", items(2))
    store.create_job("b" * 32, "sam", "safety-admin", "tiny", "sanitize", items(2))
    store.create_job("c" * 32, "ann", "safety-admin", "tiny", "allow", items(2))
    assert store.cancel_jobs_of("sam", "allow") == ["a" * 32]
    assert [store.get_job(j * 32)["status"] for j in "abc"] == ["cancelled", "queued", "queued"]


def test_database_from_before_claims_gets_the_claim_columns(url):
    old = Store(url)
    old.create_job("a" * 32, "alice", "artist", "tiny", "sanitize", items(2))
    with old.engine.begin() as conn:  # as the tables were before items were claimed
        for column in ("claimed_by", "claimed_at", "attempts"):
            conn.exec_driver_sql(f"ALTER TABLE job_items DROP COLUMN {column}")
    old.close()
    again = Store(url)
    try:
        assert [item.index for item in claim(again)] == [0, 1]
        assert [row["attempts"] for row in again.job_items("a" * 32)] == [1, 1]
    finally:
        again.close()


def test_sqlite_database_file_is_private(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'new' / 'store.db'}")
    try:
        create_key(store, "alice", "artist")
    finally:
        store.close()
    assert (tmp_path / "new" / "store.db").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700


def test_audit_log_filters(store):
    start = 1_700_000_000.123456
    store.add_audit([entry(ts=start + i, username=("alice", "sam")[i % 2], flagged=i % 3 == 0,
                           event=("generate", "job_item")[i % 2], seed=i) for i in range(10)])
    every = store.audit_entries(limit=100)
    assert [row["seed"] for row in every] == list(range(9, -1, -1))  # newest first
    assert every[-1]["ts"] == start  # double precision: microseconds survive
    seeds = lambda **filters: [row["seed"] for row in store.audit_entries(**filters)]  # noqa: E731
    assert seeds(since=start + 3, until=start + 6) == [5, 4, 3]
    assert seeds(user="sam") == [9, 7, 5, 3, 1]
    assert seeds(flagged=True) == [9, 6, 3, 0]
    assert seeds(event="generate", flagged=False) == [8, 4, 2]
    assert seeds(before_id=every[6]["id"], limit=2) == [2, 1]


def test_jobs_survive_reopening(url):
    first = Store(url)
    first.create_job("a" * 32, "alice", "artist", "tiny", "block", items(3))
    assert first.finish_item("a" * 32, 1, '["kept"]', [entry("a" * 32, seed=1)])
    first.close()

    again = Store(url)  # a restarted server
    try:
        assert [(p.job_id, p.index) for p in claim(again)] == [("a" * 32, 0), ("a" * 32, 2)]
        assert again.get_job("a" * 32)["status"] == "running"
        assert again.item_results("a" * 32, 1, 1)[0]["result"] == '["kept"]'
        assert [row["seed"] for row in job_audit(again, "a" * 32)] == [1]
    finally:
        again.close()


def test_concurrent_finishing_and_cancelling_stay_consistent(store):
    """Eight threads finish one job's items at once (plus a cancel in odd rounds): no deadlock, right final status."""
    size = 8
    for round_ in range(6):
        job_id = f"{round_:032x}"
        store.create_job(job_id, "alice", "artist", "tiny", "block", items(size))
        barrier = threading.Barrier(size + 1)

        def finish(index: int, job_id=job_id, barrier=barrier) -> bool:
            barrier.wait()
            return store.finish_item(job_id, index, "[]", [entry(job_id, seed=index)])

        def cancel(job_id=job_id, barrier=barrier, round_=round_) -> bool:
            barrier.wait()
            return round_ % 2 == 1 and store.cancel_job(job_id)

        with ThreadPoolExecutor(size + 1) as pool:
            finishes = [pool.submit(finish, i) for i in range(size)]
            cancelled = pool.submit(cancel).result()
            stored = sum(future.result() for future in finishes)
        job = store.get_job(job_id)
        assert job["counts"]["done"] == stored == len(job_audit(store, job_id))
        if cancelled:
            assert job["status"] == "cancelled" and job["counts"]["cancelled"] == size - stored
        else:
            assert job["status"] == "done" and stored == size


def test_servers_starting_together_create_the_tables_once(postgres_url):
    barrier = threading.Barrier(4)

    def open_store(_: int) -> list[str]:
        barrier.wait()
        store = Store(postgres_url)
        try:
            return sorted(inspect(store.engine).get_table_names())
        finally:
            store.close()

    with ThreadPoolExecutor(4) as pool:
        tables = list(pool.map(open_store, range(4)))
    assert tables == [["api_keys", "audit_log", "job_items", "jobs"]] * 4


def test_plain_postgresql_url_uses_psycopg(postgres_url):
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    store = Store(plain)
    try:
        assert store.engine.dialect.driver == "psycopg" and not store.has_keys()
    finally:
        store.close()


def test_unreachable_database_is_a_clear_error(tmp_path):
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'safemotion[postgres]')")
    with pytest.raises(ValueError, match="cannot open the database") as error:
        Store(f"postgresql+psycopg://alice:s3cret@/nowhere?host={tmp_path}")
    assert "s3cret" not in str(error.value) and "nowhere" in str(error.value)


def test_missing_driver_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if safemotion[postgres] were not installed
    with pytest.raises(ValueError, match=r"driver for postgresql\+psycopg is not installed.*safemotion\[postgres\]"):
        Store("postgresql://alice@/safemotion")


# ---------------------------------------------------------------------------------------------- real server


def test_server_on_postgres_survives_a_crash_mid_job(tmp_path, postgres_cluster, postgres_url):
    model = build_tiny_lcr_model(tmp_path / "tiny-lcr")
    data = tmp_path / "data"
    keys = {}
    for role, name in (("artist", "alice"), ("safety-admin", "sam")):
        status, out, err = run_cli("keys", "add", "--role", role, "--name", name, "--db", postgres_url,
                                   "--data-dir", str(data))
        assert status == 0, err
        keys[name] = out.strip().splitlines()[-1]
    dump = postgres_cluster.pg("pg_dump", "--host", str(postgres_cluster.root), "--username", "safemotion",
                               make_url(postgres_url).database).stdout
    assert "CREATE TABLE public.api_keys" in dump and hash_key(keys["alice"]) in dump
    assert not any(key[8:] in dump for key in keys.values())  # only hashes reach the database

    server = ServerProcess(model, data, tmp_path / "server.log", "--db", postgres_url, "--max-batch", "8",
                           "--claim-lease", "2")
    alice = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {keys['alice']}"}, timeout=60)
    sam = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {keys['sam']}"}, timeout=60)
    prompts = [{"prompt": f"a person dances {i}", "seconds": 9.8, "seed": 100 + i} for i in range(SLOW_JOB_ITEMS)]
    try:
        server.start()
        waved = alice.post("/v1/generate", json={"prompt": "a person waves", "seconds": 2.0, "variations": 2},
                           headers={"X-Request-ID": LONG_REQUEST_ID})
        assert waved.status_code == 200, waved.text
        job_id = alice.post("/v1/jobs", json={"items": prompts}).json()["id"]
        before = wait_for_job(alice, job_id, lambda s: s["done"] >= 1)
        server.kill()  # a crash: no shutdown code runs
        assert before["done"] < SLOW_JOB_ITEMS, "the job finished before the crash; make it longer"
        finished_before = {item["index"]: item["finished_at"] for item in before["items"] if item["status"] == "done"}

        server.start()
        after = wait_for_job(alice, job_id, lambda s: s["status"] == "done", timeout=90)
        results = all_results(alice, job_id)
        log = sam.get("/v1/audit-log", params={"limit": 1000}).json()["entries"]
    finally:
        alice.close()
        sam.close()
        server.stop()

    assert not list(data.glob("safemotion.db*"))  # everything went to PostgreSQL
    assert after["done"] == SLOW_JOB_ITEMS and after["pending"] == after["failed"] == 0
    assert [item["index"] for item in results] == list(range(SLOW_JOB_ITEMS))
    assert [[m["seed"] for m in item["motions"]] for item in results] == [[100 + i] for i in range(SLOW_JOB_ITEMS)]
    for index, finished_at in finished_before.items():  # finished before the crash: not recomputed
        assert after["items"][index]["finished_at"] == finished_at
    audited = sorted(e["seed"] for e in log if e["event"] == "job_item" and e["job_id"] == job_id)
    assert audited == [100 + i for i in range(SLOW_JOB_ITEMS)]  # one row per generated motion
    assert sorted(e["seed"] for e in log if e["request_id"] == LONG_REQUEST_ID) == [0, 1]
    store = Store(postgres_url)
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(select(audit_log.c.seed).where(audit_log.c.job_id == job_id)).scalars().all()
    finally:
        store.close()
    assert sorted(rows) == audited
