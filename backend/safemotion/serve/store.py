"""The server's database (SQLAlchemy Core): API keys, batch jobs and their items, and the audit log.

SQLite in WAL mode by default (readers never wait for the writer; a committed item survives a crash), or any
SQLAlchemy URL such as postgresql+psycopg://user@host/db (`pip install 'safemotion[postgres]'`; a plain postgresql://
URL uses psycopg too). Times are UNIX seconds (floats). Each finished job item is written, with its audit entries, in
one transaction the moment it completes, so a restart loses at most the items that were being computed.

Transactions that change a job lock its `jobs` row first (SELECT ... FOR UPDATE; SQLite serialises writers anyway),
so on PostgreSQL finishing and cancelling items of one job never deadlock and the job's final status is counted
from committed rows. Several servers (or Ray Serve replicas) may share one database; the first to start creates the
tables. A server CLAIMS the items it computes (`claim_items`: one UPDATE of rows picked with FOR UPDATE SKIP LOCKED on
PostgreSQL; on SQLite the same UPDATE under BEGIN IMMEDIATE, as SQLite has one writer at a time), renews its claims
while it works and may store only items it holds: two servers never compute one item together, and the items of a
server that died are claimed again once its lease runs out. Every claim counts an attempt; an item that used up its
attempts (it kept killing or outliving its servers) fails with that reason. Claims go round-robin over the owners of
the waiting jobs, and `create_job` enforces a per-owner quota of queued motions.
"""

from __future__ import annotations

import math
import os
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    case,
    create_engine,
    event,
    func,
    inspect,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool

ROLES = ("artist", "safety-admin")
ACTIVE_JOB_STATES = ("queued", "running")
SCHEMA_LOCK = 0x5AFE_0001  # PostgreSQL advisory lock key held while creating tables
OWNER_LOCK = 0x5AFE_0002  # advisory lock namespace for one owner's job creation (the quota check)

metadata = MetaData()

api_keys = Table(
    "api_keys", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("role", String(20), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),  # hex SHA-256 of the key
    Column("prefix", String(16), nullable=False),  # first characters of the key, to recognise it in listings
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
)

jobs = Table(
    "jobs", metadata,
    Column("id", String(32), primary_key=True),
    Column("owner", String(100), nullable=False),
    Column("role", String(20), nullable=False),
    Column("model", String(255), nullable=False),  # a model folder's name
    Column("policy", String(20), nullable=False),
    Column("status", String(20), nullable=False, index=True),  # queued, running, done, cancelled
    Column("total", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

job_items = Table(
    "job_items", metadata,
    Column("job_id", String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("prompt", Text, nullable=False),
    Column("seconds", Float),
    Column("seed", BigInteger, nullable=False),
    Column("variations", Integer, nullable=False),
    Column("status", String(20), nullable=False, index=True),  # pending, done, failed, cancelled
    Column("foot_cleanup", Boolean),  # NULL (items queued before the column existed): on
    Column("result", Text),  # JSON list of motion payloads
    Column("error", Text),
    Column("finished_at", Float),
    Column("claimed_by", String(64)),  # the worker computing (once finished: that computed) the item
    Column("claimed_at", Float),  # when that claim was made or last renewed
    Column("attempts", Integer, nullable=False, server_default="0"),  # claims so far
)


class QuotaExceeded(ValueError):
    """A job would take its owner past the per-owner quota of queued motions."""

audit_log = Table(
    "audit_log", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False, index=True),
    Column("username", String(100), nullable=False, index=True),
    Column("role", String(20), nullable=False),
    Column("event", String(20), nullable=False),  # generate, job_item, policy_refused, motion_audit
    Column("model", String(255), nullable=False),  # a model folder's name
    Column("prompt", Text),
    Column("policy", String(20)),
    Column("decision", String(20)),
    Column("flagged", Boolean),
    Column("hit_ratio", Float),
    Column("signals", Text),  # JSON list of the safety record's signals: name, score, threshold, fired
    Column("reason", Text),  # the safety record's one-sentence reason
    Column("seed", BigInteger),
    Column("variation", Integer),
    Column("job_id", String(32)),
    Column("request_id", String(64)),  # the X-Request-ID header: up to 64 characters
)


@dataclass(frozen=True)
class ApiKey:
    """A stored key (never the key itself)."""

    id: int
    name: str
    role: str
    prefix: str
    created_at: float
    revoked_at: float | None


@dataclass
class AuditEntry:
    """One row of the audit log."""

    username: str
    role: str
    event: str
    model: str
    prompt: str | None = None
    policy: str | None = None
    decision: str | None = None
    flagged: bool | None = None
    hit_ratio: float | None = None
    signals: str | None = None
    reason: str | None = None
    seed: int | None = None
    variation: int | None = None
    job_id: str | None = None
    request_id: str | None = None
    ts: float = field(default_factory=time.time)


@dataclass(frozen=True)
class JobItem:
    """One prompt of a job, as the job runner needs it."""

    job_id: str
    index: int
    prompt: str
    seconds: float | None
    seed: int
    variations: int
    policy: str
    owner: str
    role: str
    foot_cleanup: bool = True


class Store:
    """All reads and writes of the server's tables; safe to use from several threads."""

    def __init__(self, url: str):
        """Connect (creating a SQLite file's folder) and create missing tables; ValueError when that fails."""
        self.url = url
        self.engine = _create_engine(url)
        try:
            _create_tables(self.engine)
        except OperationalError as err:
            self.engine.dispose()
            where = make_url(url).render_as_string(hide_password=True)
            raise ValueError(f"cannot open the database {where}: {err.orig}".strip()) from None

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    # ------------------------------------------------------------------------------------------ API keys

    def add_key(self, name: str, role: str, key_hash: str, prefix: str) -> ApiKey:
        """Store a new key's hash; a duplicate name raises ValueError."""
        if role not in ROLES:
            raise ValueError(f"role {role!r} is unknown; choose one of {', '.join(ROLES)}")
        now = time.time()
        try:
            with self.engine.begin() as conn:
                key_id = conn.execute(api_keys.insert().values(
                    name=name, role=role, key_hash=key_hash, prefix=prefix, created_at=now)).inserted_primary_key[0]
        except IntegrityError:
            raise ValueError(f"an API key named {name!r} already exists; choose another --name") from None
        return ApiKey(key_id, name, role, prefix, now, None)

    def find_key(self, key_hash: str) -> tuple[ApiKey, str] | None:
        """The active key with this hash and its stored hash, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.key_hash == key_hash,
                                                      api_keys.c.revoked_at.is_(None))).first()
        return None if row is None else (_api_key(row), row.key_hash)

    def list_keys(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        with self.engine.connect() as conn:
            return [_api_key(row) for row in conn.execute(select(api_keys).order_by(api_keys.c.id))]

    def revoke_key(self, name: str) -> bool:
        """Revoke the active key called `name`; False when there is none."""
        with self.engine.begin() as conn:
            result = conn.execute(update(api_keys).where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
                                  .values(revoked_at=time.time()))
        return result.rowcount > 0

    def has_keys(self, include_revoked: bool = False) -> bool:
        """Whether any active key (or, with include_revoked, any key ever) exists."""
        query = select(api_keys.c.id).limit(1)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        with self.engine.connect() as conn:
            return conn.execute(query).first() is not None

    # ------------------------------------------------------------------------------------------ jobs

    def create_job(self, job_id: str, owner: str, role: str, model: str, policy: str,
                   items: list[dict[str, Any]], max_queued_motions: int | None = None) -> None:
        """Insert a queued job and its pending items (dicts with prompt, seconds, seed, variations, and optionally
        foot_cleanup, default on); QuotaExceeded when the owner would then have more than `max_queued_motions`
        motions pending."""
        now = time.time()
        with self._writing() as conn:
            if max_queued_motions is not None:
                if conn.dialect.name == "postgresql":  # concurrent jobs of one owner take turns for the check
                    conn.execute(text("SELECT pg_advisory_xact_lock(:space, :key)"),
                                 {"space": OWNER_LOCK, "key": zlib.crc32(owner.encode()) - (1 << 31)})
                queued = _queued_motions(conn, owner)
                wanted = sum(item["variations"] for item in items)
                if queued + wanted > max_queued_motions:
                    raise QuotaExceeded(f"{owner!r} already has {queued} motions queued; this job's {wanted} would "
                                        f"pass the quota of {max_queued_motions} per key. Wait for your jobs to "
                                        "finish or cancel some")
            conn.execute(jobs.insert().values(id=job_id, owner=owner, role=role, model=model, policy=policy,
                                              status="queued", total=len(items), created_at=now, updated_at=now))
            conn.execute(job_items.insert(), [
                {"job_id": job_id, "idx": i, "prompt": item["prompt"], "seconds": item["seconds"],
                 "seed": item["seed"], "variations": item["variations"], "status": "pending",
                 "foot_cleanup": item.get("foot_cleanup", True)}
                for i, item in enumerate(items)])

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        """The job row with item counts by status, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
            if row is None:
                return None
            counts = dict(conn.execute(select(job_items.c.status, func.count()).where(job_items.c.job_id == job_id)
                                       .group_by(job_items.c.status)).all())
        job = dict(row._mapping)
        job["counts"] = {status: counts.get(status, 0) for status in ("pending", "done", "failed", "cancelled")}
        return job

    def job_items(self, job_id: str) -> list[dict[str, Any]]:
        """Every item of a job without its result, by index."""
        columns = [c for c in job_items.c if c.name != "result"]
        with self.engine.connect() as conn:
            rows = conn.execute(select(*columns).where(job_items.c.job_id == job_id).order_by(job_items.c.idx))
            return [dict(row._mapping) for row in rows]

    def item_results(self, job_id: str, start: int, limit: int) -> list[dict[str, Any]]:
        """Items start..start+limit-1 of a job with status, variations, result JSON and error."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(job_items.c.idx, job_items.c.status, job_items.c.variations,
                                       job_items.c.result, job_items.c.error)
                                .where(job_items.c.job_id == job_id, job_items.c.idx >= start)
                                .order_by(job_items.c.idx).limit(limit))
            return [dict(row._mapping) for row in rows]

    def queued_motions(self, owner: str) -> int:
        """Motions still pending in `owner`'s active jobs."""
        with self.engine.connect() as conn:
            return _queued_motions(conn, owner)

    def claim_items(self, model: str, worker: str, limit: int, lease_s: float, max_attempts: int) -> list[JobItem]:
        """Claim up to `limit` pending items of active jobs for `model` for `worker`: unclaimed ones or ones whose
        claim is older than `lease_s`, shared round-robin between owners (fewest items running first), each owner's
        oldest job first. Items that already had `max_attempts` claims fail instead."""
        now = time.time()
        claimable = or_(job_items.c.claimed_by.is_(None), job_items.c.claimed_at < now - lease_s)
        waiting = ((jobs.c.status.in_(ACTIVE_JOB_STATES)) & (jobs.c.model == model) &
                   (job_items.c.status == "pending"))
        with self.engine.connect() as conn:
            exhausted = conn.execute(select(job_items.c.job_id, job_items.c.idx, job_items.c.error)
                                     .join(jobs, jobs.c.id == job_items.c.job_id)
                                     .where(waiting, claimable, job_items.c.attempts >= max_attempts)).all()
            running = func.sum(case((job_items.c.claimed_at >= now - lease_s, 1), else_=0)).label("running")
            owners = conn.execute(select(jobs.c.owner, running, func.min(jobs.c.created_at).label("oldest"))
                                  .join(jobs, jobs.c.id == job_items.c.job_id).where(waiting)
                                  .group_by(jobs.c.owner)).all()
        for row in exhausted:
            self.fail_item(row.job_id, row.idx, f"gave up after {max_attempts} attempts: the servers computing it "
                                                f"stopped, crashed or could not store it{_last(row.error)}")
        order = [row.owner for row in sorted(owners, key=lambda row: (row.running or 0, row.oldest))]
        claimed: list[JobItem] = []
        while order and len(claimed) < limit:  # rounds: owners that ran dry leave, the others share what is left
            share = max(1, math.ceil((limit - len(claimed)) / len(order)))
            for owner in list(order):
                wanted = min(share, limit - len(claimed))
                if wanted <= 0:
                    break
                got = self._claim_of(owner, waiting & claimable, worker, now, wanted, max_attempts)
                claimed += got
                if len(got) < wanted:
                    order.remove(owner)
        return claimed

    def _claim_of(self, owner: str, claimable: Any, worker: str, now: float, limit: int,
                  max_attempts: int) -> list[JobItem]:
        """Claim up to `limit` of `owner`'s claimable items, oldest job first."""
        picked = (select(job_items.c.job_id, job_items.c.idx).join(jobs, jobs.c.id == job_items.c.job_id)
                  .where(claimable, jobs.c.owner == owner, job_items.c.attempts < max_attempts)
                  .order_by(jobs.c.created_at, jobs.c.id, job_items.c.idx).limit(limit)
                  .with_for_update(skip_locked=True, of=job_items))
        with self._writing() as conn:
            keys = conn.execute(update(job_items).where(tuple_(job_items.c.job_id, job_items.c.idx).in_(picked))
                                .values(claimed_by=worker, claimed_at=now, attempts=job_items.c.attempts + 1)
                                .returning(job_items.c.job_id, job_items.c.idx)).all()
            if not keys:
                return []
            return [JobItem(*row[:-1], foot_cleanup=row.foot_cleanup is not False) for row in conn.execute(
                select(job_items.c.job_id, job_items.c.idx, job_items.c.prompt, job_items.c.seconds,
                       job_items.c.seed, job_items.c.variations, jobs.c.policy, jobs.c.owner, jobs.c.role,
                       job_items.c.foot_cleanup)
                .join(jobs, jobs.c.id == job_items.c.job_id)
                .where(tuple_(job_items.c.job_id, job_items.c.idx).in_([tuple(key) for key in keys]))
                .order_by(jobs.c.created_at, jobs.c.id, job_items.c.idx))]

    def renew_claims(self, worker: str) -> int:
        """Renew every live claim of `worker` (it is still computing them); the number renewed."""
        with self._writing() as conn:
            return conn.execute(update(job_items).where(job_items.c.claimed_by == worker,
                                                        job_items.c.status == "pending")
                                .values(claimed_at=time.time())).rowcount

    def release_claims(self, worker: str) -> None:
        """Give back `worker`'s claims on items it did not finish (a clean stop: that attempt does not count)."""
        with self._writing() as conn:
            conn.execute(update(job_items).where(job_items.c.claimed_by == worker, job_items.c.status == "pending")
                         .values(claimed_by=None, claimed_at=None, attempts=job_items.c.attempts - 1))

    def release_item(self, job_id: str, index: int, worker: str, error: str) -> None:
        """Give back `worker`'s claim on one item after a failed attempt, noting why (the attempt still counts)."""
        with self._writing() as conn:
            conn.execute(update(job_items).where(job_items.c.job_id == job_id, job_items.c.idx == index,
                                                 job_items.c.claimed_by == worker, job_items.c.status == "pending")
                         .values(claimed_by=None, claimed_at=None, error=error))

    def cancelled_jobs(self, job_ids: set[str]) -> set[str]:
        """The jobs among `job_ids` that are no longer active (cancelled, or finished elsewhere)."""
        if not job_ids:
            return set()
        with self.engine.connect() as conn:
            return set(conn.execute(select(jobs.c.id).where(jobs.c.id.in_(sorted(job_ids)),
                                                            jobs.c.status.not_in(ACTIVE_JOB_STATES))).scalars())

    def finish_item(self, job_id: str, index: int, result_json: str, entries: list[AuditEntry],
                    worker: str | None = None) -> bool:
        """Store a pending item's result and its audit entries atomically; False when it was no longer pending (or,
        given `worker`, no longer claimed by it)."""
        return self._close_item(job_id, index, {"status": "done", "result": result_json, "error": None}, entries,
                                worker)

    def fail_item(self, job_id: str, index: int, error: str, worker: str | None = None) -> bool:
        """Mark a pending item failed with its error; False when it was no longer pending (or claimed by `worker`)."""
        return self._close_item(job_id, index, {"status": "failed", "error": error}, [], worker)

    def _close_item(self, job_id: str, index: int, values: dict[str, Any], entries: list[AuditEntry],
                    worker: str | None) -> bool:
        now = time.time()
        held = [] if worker is None else [job_items.c.claimed_by == worker]
        with self._writing() as conn:
            _lock_job(conn, job_id)
            changed = conn.execute(update(job_items).where(job_items.c.job_id == job_id, job_items.c.idx == index,
                                                           job_items.c.status == "pending", *held)
                                   .values(finished_at=now, **values)).rowcount
            if not changed:
                return False
            if entries:
                conn.execute(audit_log.insert(), [asdict(entry) for entry in entries])
            left = conn.execute(select(func.count()).select_from(job_items).where(
                job_items.c.job_id == job_id, job_items.c.status == "pending")).scalar_one()
            conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status.in_(ACTIVE_JOB_STATES))
                         .values(status="running" if left else "done", updated_at=now))
        return True

    def cancel_job(self, job_id: str) -> bool:
        """Cancel an active job: its pending items become cancelled, finished ones stay; False if not active."""
        now = time.time()
        with self._writing() as conn:
            changed = conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status.in_(ACTIVE_JOB_STATES))
                                   .values(status="cancelled", updated_at=now)).rowcount
            if changed:
                conn.execute(update(job_items).where(job_items.c.job_id == job_id, job_items.c.status == "pending")
                             .values(status="cancelled", finished_at=now))
        return bool(changed)

    def cancel_jobs_of(self, owner: str, policy: str) -> list[str]:
        """Cancel every active job of `owner` with `policy`; their ids."""
        with self.engine.connect() as conn:
            ids = list(conn.execute(select(jobs.c.id).where(jobs.c.owner == owner, jobs.c.policy == policy,
                                                            jobs.c.status.in_(ACTIVE_JOB_STATES))).scalars())
        return [job_id for job_id in ids if self.cancel_job(job_id)]

    @contextmanager
    def _writing(self) -> Iterator[Any]:
        """A write transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE), so a transaction that
        reads before it writes waits its turn instead of failing when another writer committed in between."""
        with self.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn

    # ------------------------------------------------------------------------------------------ audit log

    def add_audit(self, entries: list[AuditEntry]) -> None:
        """Append entries to the audit log."""
        if entries:
            with self.engine.begin() as conn:
                conn.execute(audit_log.insert(), [asdict(entry) for entry in entries])

    def audit_entries(self, since: float | None = None, until: float | None = None, user: str | None = None,
                      flagged: bool | None = None, event: str | None = None, before_id: int | None = None,
                      limit: int = 100) -> list[dict[str, Any]]:
        """Audit rows matching every given filter, newest first."""
        query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        column = audit_log.c
        filters = [(since, lambda: column.ts >= since), (until, lambda: column.ts < until),
                   (user, lambda: column.username == user), (flagged, lambda: column.flagged == flagged),
                   (event, lambda: column.event == event), (before_id, lambda: column.id < before_id)]
        for value, condition in filters:
            if value is not None:
                query = query.where(condition())
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]


def _api_key(row: Any) -> ApiKey:
    return ApiKey(row.id, row.name, row.role, row.prefix, row.created_at, row.revoked_at)


def _queued_motions(conn: Any, owner: str) -> int:
    return conn.execute(select(func.coalesce(func.sum(job_items.c.variations), 0))
                        .join(jobs, jobs.c.id == job_items.c.job_id)
                        .where(jobs.c.owner == owner, jobs.c.status.in_(ACTIVE_JOB_STATES),
                               job_items.c.status == "pending")).scalar_one()


def _last(error: str | None) -> str:
    return f" (last: {error})" if error else ""


def _lock_job(conn: Any, job_id: str) -> None:
    """Lock a job's row until the transaction ends (a no-op on SQLite, whose writers take turns)."""
    conn.execute(select(jobs.c.id).where(jobs.c.id == job_id).with_for_update())


def _create_tables(engine: Engine) -> None:
    """Create missing tables and columns; on PostgreSQL under an advisory lock, as servers starting together would
    collide."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
        metadata.create_all(conn)
        _add_missing_columns(conn)


def _add_missing_columns(conn: Any) -> None:
    """Add the columns later versions introduced (foot_cleanup, the claim columns, signals) to an older database's tables."""
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspect(conn).get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                kind = column.type.compile(dialect=conn.dialect)
                if column.server_default is not None:
                    kind += f" NOT NULL DEFAULT {column.server_default.arg}"
                conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))


def _create_engine(url: str) -> Engine:
    """An engine; SQLite gets its folder created, WAL journaling, a busy timeout and enforced foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")  # SQLAlchemy 2.0 would pick psycopg2
        try:
            return create_engine(parsed, pool_pre_ping=True)
        except ImportError as err:  # the driver, or psycopg's libpq wrapper
            extra = " (pip install 'safemotion[postgres]')" if parsed.get_backend_name() == "postgresql" else ""
            raise ValueError(f"the database driver for {parsed.drivername} is not installed: {err}{extra}") from None
    database = parsed.database or ""
    in_memory = database in ("", ":memory:")
    if not in_memory:
        path = Path(database).expanduser()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # owner-only: it holds prompts and results (SQLite gives its -wal and -shm files the same mode)
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    options: dict[str, Any] = {"poolclass": StaticPool} if in_memory else {}
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **options)

    @event.listens_for(engine, "connect")
    def _pragmas(connection, _record):  # noqa: ANN001 - DB-API connection
        cursor = connection.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine
