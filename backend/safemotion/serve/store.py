"""The server's database (SQLAlchemy Core): API keys, batch jobs and their items, and the audit log.

SQLite in WAL mode by default (readers never wait for the writer; a committed item survives a crash), or any
SQLAlchemy URL such as postgresql+psycopg://user@host/db (`pip install 'safemotion[postgres]'`; a plain postgresql://
URL uses psycopg too). Times are UNIX seconds (floats). Each finished job item is written, with its audit entries, in
one transaction the moment it completes, so a restart loses at most the items that were being computed.

Transactions that change a job lock its `jobs` row first (SELECT ... FOR UPDATE; SQLite serialises writers anyway),
so on PostgreSQL finishing and cancelling items of one job never deadlock and the job's final status is counted
from committed rows. Several servers may share one PostgreSQL database; the first to start creates the tables.
"""

from __future__ import annotations

import time
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
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool

ROLES = ("artist", "safety-admin")
ACTIVE_JOB_STATES = ("queued", "running")
SCHEMA_LOCK = 0x5AFE_0001  # PostgreSQL advisory lock key held while creating tables

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
    Column("result", Text),  # JSON list of motion payloads
    Column("error", Text),
    Column("finished_at", Float),
)

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

    def has_keys(self) -> bool:
        """Whether any active key exists (then every request needs one)."""
        with self.engine.connect() as conn:
            return conn.execute(select(api_keys.c.id).where(api_keys.c.revoked_at.is_(None)).limit(1)).first() \
                is not None

    # ------------------------------------------------------------------------------------------ jobs

    def create_job(self, job_id: str, owner: str, role: str, model: str, policy: str,
                   items: list[dict[str, Any]]) -> None:
        """Insert a queued job and its pending items (dicts with prompt, seconds, seed, variations)."""
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(jobs.insert().values(id=job_id, owner=owner, role=role, model=model, policy=policy,
                                              status="queued", total=len(items), created_at=now, updated_at=now))
            conn.execute(job_items.insert(), [
                {"job_id": job_id, "idx": i, "prompt": item["prompt"], "seconds": item["seconds"],
                 "seed": item["seed"], "variations": item["variations"], "status": "pending"}
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

    def pending_items(self, model: str, limit: int, skip: set[tuple[str, int]]) -> list[JobItem]:
        """Up to `limit` pending items of active jobs for `model`, oldest job first, not in `skip`."""
        query = (select(job_items.c.job_id, job_items.c.idx, job_items.c.prompt, job_items.c.seconds,
                        job_items.c.seed, job_items.c.variations, jobs.c.policy, jobs.c.owner, jobs.c.role)
                 .join(jobs, jobs.c.id == job_items.c.job_id)
                 .where(jobs.c.status.in_(ACTIVE_JOB_STATES), jobs.c.model == model,
                        job_items.c.status == "pending")
                 .order_by(jobs.c.created_at, jobs.c.id, job_items.c.idx)
                 .limit(limit + len(skip)))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        items = [JobItem(*row) for row in rows if (row.job_id, row.idx) not in skip]
        return items[:limit]

    def finish_item(self, job_id: str, index: int, result_json: str, entries: list[AuditEntry]) -> bool:
        """Store a pending item's result and its audit entries atomically; False when it was no longer pending."""
        return self._close_item(job_id, index, {"status": "done", "result": result_json}, entries)

    def fail_item(self, job_id: str, index: int, error: str) -> bool:
        """Mark a pending item failed with its error; False when it was no longer pending."""
        return self._close_item(job_id, index, {"status": "failed", "error": error}, [])

    def _close_item(self, job_id: str, index: int, values: dict[str, Any], entries: list[AuditEntry]) -> bool:
        now = time.time()
        with self.engine.begin() as conn:
            _lock_job(conn, job_id)
            changed = conn.execute(update(job_items).where(job_items.c.job_id == job_id, job_items.c.idx == index,
                                                           job_items.c.status == "pending")
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
        with self.engine.begin() as conn:
            changed = conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status.in_(ACTIVE_JOB_STATES))
                                   .values(status="cancelled", updated_at=now)).rowcount
            if changed:
                conn.execute(update(job_items).where(job_items.c.job_id == job_id, job_items.c.status == "pending")
                             .values(status="cancelled", finished_at=now))
        return bool(changed)

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


def _lock_job(conn: Any, job_id: str) -> None:
    """Lock a job's row until the transaction ends (a no-op on SQLite, whose writers take turns)."""
    conn.execute(select(jobs.c.id).where(jobs.c.id == job_id).with_for_update())


def _create_tables(engine: Engine) -> None:
    """Create missing tables and audit-log columns; on PostgreSQL under an advisory lock, as servers starting together
    would collide."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
        metadata.create_all(conn)
        _add_audit_columns(conn)


def _add_audit_columns(conn: Any) -> None:
    """Add the audit-log columns that databases written by older versions lack (signals, reason)."""
    present = {column["name"] for column in inspect(conn).get_columns("audit_log")}
    for name in ("signals", "reason"):
        if name not in present:
            conn.execute(text(f"ALTER TABLE audit_log ADD COLUMN {name} TEXT"))


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
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
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
