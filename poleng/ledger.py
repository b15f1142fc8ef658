"""The batch ledger: the exactly-once record of every batch that reached the inbox.

One row per batch in table ``batches``, keyed by the batch's content hash (sha256 hex of the file
bytes), so the same survey file dropped twice under two names is recognised as one batch. Table
``batch_events`` is the append-only audit trail: every claim, duplicate sighting, busy sighting,
quarantine, retryable failure, release and completion adds a row.

The same code runs on embedded SQLite (``sqlite:///<home>/ledger.db``) and on PostgreSQL
(``postgresql+psycopg2://...``). Tables are created on first use.

Claims are atomic in the database, never read-then-write:

* a new batch is claimed by a plain ``INSERT``; a concurrent insert of the same id fails on the
  primary key (``IntegrityError``), which is caught and treated as "the row exists";
* an existing batch is taken over by ONE conditional ``UPDATE ... WHERE batch_id = :id AND
  (status IN ('received', 'failed_retryable') OR (status = 'processing' AND claimed_at < :cutoff))``;
  the database decides, and ``rowcount == 1`` means this caller won. On PostgreSQL (READ COMMITTED)
  a concurrent updater blocks on the row lock and then re-checks the ``WHERE`` against the committed
  row, so exactly one wins. On SQLite every writing transaction starts with ``BEGIN IMMEDIATE`` (the
  database write lock, waited for through the busy timeout), so writers are serialised.

Timestamps are timezone-aware UTC datetimes on both backends. A ``Ledger`` holds a connection pool:
create one per process (do not share one across ``fork``).
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Dialect,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

__all__ = [
    "BatchEvent",
    "BatchRecord",
    "BatchStatus",
    "Claim",
    "ClaimOutcome",
    "Ledger",
    "LedgerError",
    "LostClaim",
    "UnknownBatch",
    "utcnow",
]

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Arbitrary constant key for the PostgreSQL advisory lock that serialises ``create_all``.
_PG_DDL_LOCK_KEY = 0x706F6C656E67  # "poleng"


class BatchStatus(StrEnum):
    """Lifecycle of a batch in the ledger."""

    RECEIVED = "received"
    PROCESSING = "processing"
    SCORED = "scored"
    QUARANTINED = "quarantined"
    FAILED_RETRYABLE = "failed_retryable"


class ClaimOutcome(StrEnum):
    """What :meth:`Ledger.claim` decided."""

    CLAIMED = "claimed"  # the caller now owns the batch and must process it
    DUPLICATE = "duplicate"  # the same content was already scored
    BUSY = "busy"  # another worker holds a live claim
    QUARANTINED_BEFORE = "quarantined_before"  # the same content was quarantined earlier


# Statuses from which a batch may be (re)claimed without waiting for a timeout.
_CLAIMABLE = (BatchStatus.RECEIVED.value, BatchStatus.FAILED_RETRYABLE.value)


class LedgerError(RuntimeError):
    """Base class of ledger errors."""


class LostClaim(LedgerError):
    """The caller does not (or no longer) hold the claim it acts on."""


class UnknownBatch(LedgerError, KeyError):
    """No ledger row for this batch id."""


def utcnow() -> datetime:
    """The current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    PostgreSQL stores ``timestamptz``; SQLite stores naive UTC text in one fixed format, so that
    comparisons in SQL (``claimed_at < :cutoff``) are correct there too.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass timezone-aware UTC datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

_status_check = "status IN ({})".format(", ".join(f"'{s.value}'" for s in BatchStatus))

batches = Table(
    "batches",
    metadata,
    Column("batch_id", String(64), primary_key=True, comment="sha256 hex of the file bytes"),
    Column("file_name", Text, nullable=False, comment="first file name seen for this content"),
    Column("status", String(32), nullable=False),
    Column("claimed_by", String(255), comment="owner of the live claim, e.g. host:pid:uuid"),
    Column("claimed_at", UTCDateTime()),
    Column("attempts", Integer, nullable=False, default=0),
    Column("rows_received", Integer),
    Column("rows_valid", Integer),
    Column("rows_rejected", Integer),
    Column("contacts", Integer),
    Column("drift", Boolean),
    Column("drift_summary", Text),
    Column("too_small", Boolean),
    Column("action", String(64)),
    Column("model_version", String(64)),
    Column("contact_csv", Text),
    Column("contact_parquet", Text),
    Column("rejected_rows_path", Text),
    Column("report_html", Text),
    Column("report_json", Text),
    Column("quarantine_reason", String(64), comment="machine-readable code"),
    Column("error", Text),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime()),
    Column("finished_at", UTCDateTime()),
    Column("durations_json", Text, comment="JSON object: step name -> seconds"),
    CheckConstraint(_status_check, name="ck_batches_status"),
    Index("ix_batches_status_finished", "status", "finished_at"),
    Index("ix_batches_received_at", "received_at"),
)

batch_events = Table(
    "batch_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("batch_id", String(64), nullable=False, index=True),
    Column("file_name", Text),
    Column("event", String(32), nullable=False),
    Column("detail", Text),
    Column("at", UTCDateTime(), nullable=False),
)

_COLUMNS: frozenset[str] = frozenset(c.name for c in batches.columns)
# Columns that only the ledger's own state transitions may write.
_MANAGED = frozenset({"batch_id", "status", "claimed_by", "claimed_at", "attempts"})


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """An immutable snapshot of one ``batches`` row."""

    batch_id: str
    file_name: str
    status: BatchStatus
    claimed_by: str | None
    claimed_at: datetime | None
    attempts: int
    rows_received: int | None
    rows_valid: int | None
    rows_rejected: int | None
    contacts: int | None
    drift: bool | None
    drift_summary: str | None
    too_small: bool | None
    action: str | None
    model_version: str | None
    contact_csv: str | None
    contact_parquet: str | None
    rejected_rows_path: str | None
    report_html: str | None
    report_json: str | None
    quarantine_reason: str | None
    error: str | None
    received_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    durations_json: str | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> BatchRecord:
        """Build a snapshot from a result row mapping."""
        values = {f.name: row[f.name] for f in fields(cls)}
        values["status"] = BatchStatus(values["status"])
        return cls(**values)

    @property
    def durations(self) -> dict[str, float]:
        """Per-step seconds parsed from ``durations_json`` (empty if unset)."""
        return json.loads(self.durations_json) if self.durations_json else {}


assert {f.name for f in fields(BatchRecord)} == _COLUMNS, "BatchRecord and table batches diverged"


@dataclass(frozen=True, slots=True)
class BatchEvent:
    """One row of the audit trail."""

    id: int
    batch_id: str
    file_name: str | None
    event: str
    detail: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class Claim:
    """The result of :meth:`Ledger.claim`: the decision and the row as it stands after it."""

    outcome: ClaimOutcome
    batch_id: str
    record: BatchRecord | None

    @property
    def claimed(self) -> bool:
        """True when the caller now owns the batch."""
        return self.outcome is ClaimOutcome.CLAIMED


def _coerce(name: str, value: Any) -> Any:
    """Normalise a field value for storage: paths to text, a durations mapping to JSON."""
    if isinstance(value, Path):
        return str(value)
    if name == "durations_json" and isinstance(value, Mapping):
        return json.dumps({str(k): float(v) for k, v in value.items()}, sort_keys=True)
    if isinstance(value, StrEnum):
        return value.value
    return value


def _check_fields(values: Mapping[str, Any], *, forbidden: frozenset[str]) -> dict[str, Any]:
    """Validate user-supplied column values; raise ``ValueError`` on unknown or managed names."""
    unknown = sorted(set(values) - _COLUMNS)
    if unknown:
        raise ValueError(f"unknown ledger column(s): {', '.join(unknown)}")
    bad = sorted(set(values) & forbidden)
    if bad:
        raise ValueError(f"ledger column(s) not settable here: {', '.join(bad)}")
    return {k: _coerce(k, v) for k, v in values.items()}


class Ledger:
    """Exactly-once ledger of batches on SQLite or PostgreSQL (any SQLAlchemy URL of those two)."""

    def __init__(self, url: str) -> None:
        """Connect to ``url`` and create the tables if they do not exist yet."""
        self.url = url
        self._engine = self._make_engine(url)
        self._create_tables()

    # --- engine and transactions -----------------------------------------------------------------
    @staticmethod
    def _make_engine(url: str) -> Engine:
        sa_url = make_url(url)
        if sa_url.get_backend_name() != "sqlite":
            return create_engine(sa_url, pool_pre_ping=True)

        database = sa_url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(sa_url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        else:  # in-memory: one shared connection, or every checkout would see an empty database
            engine = create_engine(sa_url, poolclass=StaticPool, connect_args={"check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take transaction control away from pysqlite: we emit BEGIN ourselves (below).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            # Switching to WAL needs a lock that SQLite does not wait for (no busy handler): when
            # several processes open a new ledger at once it can fail with "database is locked".
            for attempt in range(100):
                try:
                    cur.execute("PRAGMA journal_mode = WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or attempt == 99:
                        raise
                    time.sleep(0.05)
            cur.execute("PRAGMA synchronous = NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # Writers take the write lock up front (waiting via busy_timeout) instead of upgrading a
            # read lock mid-transaction, which in WAL mode fails at once with SQLITE_BUSY_SNAPSHOT.
            write = conn.get_execution_options().get("poleng_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    @property
    def dialect(self) -> str:
        """Backend name: ``sqlite`` or ``postgresql``."""
        return self._engine.dialect.name

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A writing transaction (``BEGIN IMMEDIATE`` on SQLite); commits on success."""
        with self._engine.connect() as conn:
            conn.execution_options(poleng_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read-only transaction."""
        with self._engine.connect() as conn, conn.begin():
            yield conn

    def _create_tables(self) -> None:
        # Two processes starting together would both see "no table" and both CREATE: serialise them.
        with self._write() as conn:
            if self.dialect == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(_PG_DDL_LOCK_KEY)))
            metadata.create_all(conn)

    def close(self) -> None:
        """Release all pooled connections."""
        self._engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- helpers ------------------------------------------------------------------------------------
    @staticmethod
    def _event(
        conn: Connection, batch_id: str, file_name: str | None, name: str, detail: str | None, at: datetime
    ) -> None:
        conn.execute(
            insert(batch_events).values(
                batch_id=batch_id, file_name=file_name, event=name, detail=detail, at=at
            )
        )

    @staticmethod
    def _get(conn: Connection, batch_id: str) -> BatchRecord | None:
        row = conn.execute(select(batches).where(batches.c.batch_id == batch_id)).mappings().first()
        return BatchRecord.from_row(row) if row is not None else None

    @staticmethod
    def _file_name(conn: Connection, batch_id: str) -> str | None:
        return conn.execute(select(batches.c.file_name).where(batches.c.batch_id == batch_id)).scalar()

    @staticmethod
    def _held_by(batch_id: str, owner: str) -> Any:
        """WHERE clause: ``owner`` holds a live (processing) claim on ``batch_id``."""
        return and_(
            batches.c.batch_id == batch_id,
            batches.c.status == BatchStatus.PROCESSING.value,
            batches.c.claimed_by == owner,
        )

    def _lost(self, batch_id: str, owner: str | None, action: str) -> LostClaim | UnknownBatch:
        current = self.get(batch_id)
        if current is None:
            return UnknownBatch(batch_id)
        return LostClaim(
            f"{action} {batch_id[:12]}: owner {owner!r} does not hold the claim "
            f"(status={current.status.value}, claimed_by={current.claimed_by!r})"
        )

    # --- claiming --------------------------------------------------------------------------------------
    def claim(self, batch_id: str, file_name: str, owner: str, claim_timeout_s: int = 900) -> Claim:
        """Try to take ownership of a batch; see the module docstring for the atomicity argument.

        * new id: insert it as ``processing`` for ``owner`` -> CLAIMED (attempts = 1);
        * ``received`` / ``failed_retryable``, or ``processing`` with ``claimed_at`` older than
          ``claim_timeout_s`` (a crashed worker): taken over -> CLAIMED (attempts + 1);
        * ``scored`` -> DUPLICATE, ``quarantined`` -> QUARANTINED_BEFORE;
        * ``processing`` with a live claim (by anyone, the same owner included) -> BUSY.

        Every outcome is recorded as an event naming ``file_name``.
        """
        for _ in range(5):  # more than one round only if the row changes between our statements
            now = utcnow()
            try:
                with self._write() as conn:
                    conn.execute(
                        insert(batches).values(
                            batch_id=batch_id,
                            file_name=file_name,
                            status=BatchStatus.PROCESSING.value,
                            claimed_by=owner,
                            claimed_at=now,
                            attempts=1,
                            received_at=now,
                            started_at=now,
                        )
                    )
                    self._event(conn, batch_id, file_name, "claimed", f"new batch; owner={owner}", now)
                    record = self._get(conn, batch_id)
                return Claim(ClaimOutcome.CLAIMED, batch_id, record)
            except IntegrityError:
                pass  # the row exists (perhaps inserted concurrently a moment ago): fall through

            cutoff = now - timedelta(seconds=claim_timeout_s)
            with self._write() as conn:
                before = self._get(conn, batch_id)  # informational only: the UPDATE decides
                taken = conn.execute(
                    update(batches)
                    .where(
                        batches.c.batch_id == batch_id,
                        or_(
                            batches.c.status.in_(_CLAIMABLE),
                            and_(
                                batches.c.status == BatchStatus.PROCESSING.value,
                                or_(batches.c.claimed_at.is_(None), batches.c.claimed_at < cutoff),
                            ),
                        ),
                    )
                    .values(
                        status=BatchStatus.PROCESSING.value,
                        claimed_by=owner,
                        claimed_at=now,
                        started_at=now,
                        finished_at=None,
                        attempts=batches.c.attempts + 1,
                    )
                ).rowcount
                record = self._get(conn, batch_id)
                if record is None:
                    continue  # deleted under us (not something the ledger does): insert again
                if taken == 1:
                    prev = (
                        f"{before.status.value} by {before.claimed_by}" if before is not None else "unknown"
                    )
                    detail = f"takeover (was {prev}); attempt {record.attempts}; owner={owner}"
                    self._event(conn, batch_id, file_name, "claimed", detail, now)
                    return Claim(ClaimOutcome.CLAIMED, batch_id, record)
                if record.status is BatchStatus.SCORED:
                    detail = f"file {file_name!r} has the content of {record.file_name!r}, already scored"
                    self._event(conn, batch_id, file_name, "duplicate", detail, now)
                    return Claim(ClaimOutcome.DUPLICATE, batch_id, record)
                if record.status is BatchStatus.QUARANTINED:
                    detail = (
                        f"file {file_name!r} has the content of {record.file_name!r}, quarantined "
                        f"({record.quarantine_reason})"
                    )
                    self._event(conn, batch_id, file_name, "quarantined_before", detail, now)
                    return Claim(ClaimOutcome.QUARANTINED_BEFORE, batch_id, record)
                since = record.claimed_at
                if record.status is BatchStatus.PROCESSING and since is not None and since >= cutoff:
                    detail = f"file {file_name!r}: claimed by {record.claimed_by} since {since.isoformat()}"
                    self._event(conn, batch_id, file_name, "busy", detail, now)
                    return Claim(ClaimOutcome.BUSY, batch_id, record)
            # The row became claimable between the UPDATE and the SELECT (PostgreSQL): try again.
        return Claim(ClaimOutcome.BUSY, batch_id, self.get(batch_id))

    def heartbeat(self, batch_id: str, owner: str) -> None:
        """Refresh ``claimed_at`` of a live claim so it is not taken over; raise ``LostClaim`` if not held."""
        with self._write() as conn:
            n = conn.execute(
                update(batches).where(self._held_by(batch_id, owner)).values(claimed_at=utcnow())
            ).rowcount
        if n != 1:
            raise self._lost(batch_id, owner, "heartbeat")

    def release(self, batch_id: str, owner: str) -> None:
        """Give a claim back without failure: status ``received``, claim cleared."""
        now = utcnow()
        with self._write() as conn:
            n = conn.execute(
                update(batches)
                .where(self._held_by(batch_id, owner))
                .values(status=BatchStatus.RECEIVED.value, claimed_by=None, claimed_at=None)
            ).rowcount
            if n == 1:
                self._event(
                    conn, batch_id, self._file_name(conn, batch_id), "released", f"owner={owner}", now
                )
        if n != 1:
            raise self._lost(batch_id, owner, "release")

    # --- updating -------------------------------------------------------------------------------------
    def update(self, batch_id: str, **values: Any) -> None:
        """Set known columns of a batch (e.g. row counts, paths while processing).

        Raises ``ValueError`` for unknown columns or the claim-managed ones (status, claimed_by,
        claimed_at, attempts, batch_id), ``UnknownBatch`` if the row does not exist.
        """
        clean = _check_fields(values, forbidden=_MANAGED)
        if not clean:
            return
        with self._write() as conn:
            n = conn.execute(update(batches).where(batches.c.batch_id == batch_id).values(**clean)).rowcount
        if n != 1:
            raise UnknownBatch(batch_id)

    def complete(self, batch_id: str, owner: str, **values: Any) -> None:
        """Mark a batch ``scored`` (with ``finished_at``) and store ``values``, only if ``owner`` holds it.

        ``claimed_by`` is kept as the record of who scored the batch; ``error`` (left by an earlier
        retryable failure) is cleared unless given. Raises ``LostClaim`` when the
        claim was taken over (or never held), ``ValueError`` for bad columns.
        """
        clean = _check_fields(values, forbidden=_MANAGED)
        now = utcnow()
        clean.setdefault("finished_at", now)
        clean.setdefault("error", None)  # an earlier attempt's transient error no longer describes the batch
        with self._write() as conn:
            n = conn.execute(
                update(batches)
                .where(self._held_by(batch_id, owner))
                .values(status=BatchStatus.SCORED.value, **clean)
            ).rowcount
            if n == 1:
                detail = f"action={clean.get('action')}; model={clean.get('model_version')}; owner={owner}"
                self._event(conn, batch_id, self._file_name(conn, batch_id), "completed", detail, now)
        if n != 1:
            raise self._lost(batch_id, owner, "complete")

    def quarantine(
        self, batch_id: str, file_name: str, reason: str, error: str, owner: str | None, **values: Any
    ) -> None:
        """Mark a batch ``quarantined`` with a machine-readable ``reason`` and a human ``error``.

        With ``owner``: the caller must hold the claim (else ``LostClaim``). Without: the batch is
        recorded as quarantined if it is new, or if it is not scored and not claimed by a live worker
        (else ``LostClaim``). Extra ``values`` (row counts, paths) are stored as well.
        """
        clean = _check_fields(values, forbidden=_MANAGED | {"quarantine_reason", "error"})
        now = utcnow()
        fields_ = {
            "status": BatchStatus.QUARANTINED.value,
            "quarantine_reason": reason,
            "error": error,
            "action": "quarantined",
            "finished_at": now,
            **clean,
        }
        if owner is not None:
            where = self._held_by(batch_id, owner)
        else:
            try:
                with self._write() as conn:
                    conn.execute(
                        insert(batches).values(
                            batch_id=batch_id, file_name=file_name, attempts=0, received_at=now, **fields_
                        )
                    )
                    self._event(conn, batch_id, file_name, "quarantined", f"{reason}: {error}", now)
                return
            except IntegrityError:
                pass
            where = and_(
                batches.c.batch_id == batch_id,
                batches.c.status.in_((*_CLAIMABLE, BatchStatus.QUARANTINED.value)),
            )
        with self._write() as conn:
            n = conn.execute(update(batches).where(where).values(**fields_)).rowcount
            if n == 1:
                self._event(conn, batch_id, file_name, "quarantined", f"{reason}: {error}", now)
        if n != 1:
            raise self._lost(batch_id, owner, "quarantine")

    def fail_retryable(self, batch_id: str, owner: str, error: str) -> None:
        """Record a transient failure: status ``failed_retryable``, claim released, ``error`` kept."""
        now = utcnow()
        with self._write() as conn:
            n = conn.execute(
                update(batches)
                .where(self._held_by(batch_id, owner))
                .values(
                    status=BatchStatus.FAILED_RETRYABLE.value,
                    claimed_by=None,
                    claimed_at=None,
                    error=error,
                    finished_at=now,
                )
            ).rowcount
            if n == 1:
                self._event(
                    conn,
                    batch_id,
                    self._file_name(conn, batch_id),
                    "failed_retryable",
                    f"owner={owner}: {error}",
                    now,
                )
        if n != 1:
            raise self._lost(batch_id, owner, "fail_retryable")

    # --- reading ---------------------------------------------------------------------------------------
    def get(self, batch_id: str) -> BatchRecord | None:
        """The batch's current row, or ``None``."""
        with self._read() as conn:
            return self._get(conn, batch_id)

    def list(self, limit: int | None = None) -> builtins.list[BatchRecord]:
        """Batches, newest first (by first receipt)."""
        stmt = select(batches).order_by(batches.c.received_at.desc(), batches.c.batch_id).limit(limit)
        with self._read() as conn:
            return [BatchRecord.from_row(r) for r in conn.execute(stmt).mappings()]

    def events(self, batch_id: str | None = None) -> builtins.list[BatchEvent]:
        """Audit-trail rows in insertion order, for one batch or all."""
        stmt = select(batch_events).order_by(batch_events.c.id)
        if batch_id is not None:
            stmt = stmt.where(batch_events.c.batch_id == batch_id)
        with self._read() as conn:
            return [BatchEvent(**r) for r in conn.execute(stmt).mappings()]

    def recent_drift(self, m: int) -> builtins.list[bool]:
        """Drift verdicts of the last ``m`` scored batches that have one, newest first.

        Scored batches whose ``drift`` is NULL (not checked) carry no verdict and are skipped.
        """
        stmt = (
            select(batches.c.drift)
            .where(batches.c.status == BatchStatus.SCORED.value, batches.c.drift.is_not(None))
            .order_by(batches.c.finished_at.desc(), batches.c.batch_id)
            .limit(m)
        )
        with self._read() as conn:
            return [bool(d) for d in conn.execute(stmt).scalars()]

    def counts(self) -> dict[str, int]:
        """Number of batches per status (every status present, zeros included)."""
        stmt = select(batches.c.status, func.count()).group_by(batches.c.status)
        out = {s.value: 0 for s in BatchStatus}
        with self._read() as conn:
            out.update({status: int(n) for status, n in conn.execute(stmt)})
        return out

    def clear(self) -> None:
        """Delete every batch and event (``poleng reset`` on a server ledger)."""
        with self._write() as conn:
            conn.execute(batch_events.delete())
            conn.execute(batches.delete())
