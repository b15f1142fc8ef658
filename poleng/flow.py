"""The batch loop: claim -> validate -> score once -> drift -> (retrain) -> contact file -> ledger.

``process_inbox`` is what a scheduler (Mage's ``process_batches``) or ``poleng process`` calls. It
is the only place that composes contract, ledger, scoring, drift and lifecycle for batches.

Exactly once. A batch's identity is the sha256 of its bytes. Every output path is derived from
that id, every file is written atomically (temporary file, then rename), and the ledger row is
completed *before* the original leaves ``inbox/``. So a crash at any step leaves the file in
``inbox/`` with its ledger row ``processing`` (taken over after ``claim_timeout_s``) or
``failed_retryable``; a rerun rewrites the same outputs under the same names and never adds a
second contact file. A file whose content was already scored is a duplicate, whatever its name.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from poleng import contract, datasets
from poleng.contract import BatchRejected, ContractError
from poleng.ledger import ClaimOutcome, Ledger
from poleng.settings import Settings

log = logging.getLogger("poleng.flow")
_T = TypeVar("_T")

DATA_SUFFIXES = contract.SUPPORTED_SUFFIXES


@dataclass
class BatchResult:
    """What happened to one inbox file, as shown by ``simulate``/``process`` and stored in the ledger."""

    file_name: str
    batch_id: str
    status: str  # scored | duplicate | quarantined | busy | failed_retryable
    action: str = ""  # scored | retrained-promoted | retrained-rejected | scored-under-drift | ...
    rows_received: int = 0
    rows_valid: int = 0
    rows_rejected: int = 0
    contacts: int = 0
    drift: bool | None = None
    drift_summary: str = ""
    too_small: bool | None = None
    model_version: str | None = None
    reason: str | None = None  # quarantine reason code / duplicate-of
    error: str | None = None
    contact_csv: str | None = None
    contact_parquet: str | None = None
    report_html: str | None = None
    report_json: str | None = None
    retrain: dict[str, object] | None = None
    durations: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def owner_id() -> str:
    """A claim owner unique to this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def inbox_files(settings: Settings) -> list[Path]:
    """Files waiting in the inbox, oldest first (mtime, then name). Hidden/temporary files are skipped."""
    if not settings.inbox.exists():
        return []
    files = [p for p in settings.inbox.iterdir() if p.is_file() and not p.name.startswith(".")]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))


def _short(batch_id: str) -> str:
    return batch_id[:12]


def _move(src: Path, dst_dir: Path, name: str) -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / name
    os.replace(src, dst)
    return dst


def _write_reason(path: Path, payload: dict[str, object]) -> None:
    datasets.atomic_write_bytes(path, json.dumps(payload, indent=1, default=str).encode())


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def process_inbox(
    settings: Settings,
    *,
    owner: str | None = None,
    progress: bool = False,
) -> list[BatchResult]:
    """Process every file waiting in ``inbox/`` once; return one result per file looked at."""
    settings.ensure_dirs()
    owner = owner or owner_id()
    files = inbox_files(settings)
    if files:
        from poleng import scoring

        scoring.load_champion(settings)  # fail fast, with a clear message, before claiming anything
    ledger = Ledger(settings.resolved_ledger_url)  # after the check: a failed check leaks no pool
    results: list[BatchResult] = []
    ctx = _Context(settings, ledger, owner)
    try:
        bar = _Bar(progress, len(files))
        for path in files:
            bar.step(path.name)
            results.append(process_file(path, ctx))
        bar.close()
    finally:
        ledger.close()
    return results


class _Bar:
    def __init__(self, enabled: bool, total: int):
        self.progress = None
        if enabled and total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.progress = Progress(TextColumn("batches"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.description}"), transient=True)
            self.progress.start()
            self.task = self.progress.add_task("", total=total)
            self.started = False

    def step(self, name: str) -> None:
        if self.progress is not None:
            if self.started:
                self.progress.advance(self.task)
            self.started = True
            self.progress.update(self.task, description=name)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


@dataclass
class _Context:
    settings: Settings
    ledger: Ledger
    owner: str


def process_file(path: Path, ctx: _Context) -> BatchResult:
    """Claim one inbox file and carry it to scored, quarantined, duplicate or retryable.

    A file that disappears before we own it was taken by another worker (listed by both, moved by
    the other): that is reported as ``gone``, not as an error.
    """
    try:
        return _process_file(path, ctx)
    except FileNotFoundError:
        if path.exists():
            raise
        return BatchResult(file_name=path.name, batch_id="", status="gone", reason="handled by another worker")


def _process_file(path: Path, ctx: _Context) -> BatchResult:
    s, ledger = ctx.settings, ctx.ledger
    batch_id = datasets.file_hash(path)
    result = BatchResult(file_name=path.name, batch_id=batch_id, status="")
    wait = retry_wait_s(ledger.get(batch_id), s)
    if wait > 0:
        result.status, result.reason = "waiting_retry", f"retry in {wait:.0f} s"
        return result
    claim = ledger.claim(batch_id, path.name, ctx.owner, s.claim_timeout_s)
    if claim.outcome == ClaimOutcome.BUSY:
        result.status = "busy"
        return result
    if claim.outcome == ClaimOutcome.DUPLICATE:
        return _handle_scored_again(path, claim.record, result, s)
    if claim.outcome == ClaimOutcome.QUARANTINED_BEFORE:
        record = claim.record
        reason = record.quarantine_reason if record else "quarantined"
        _quarantine_file(path, s, batch_id, reason or "quarantined",
                         f"same content was quarantined before: {record.error if record else ''}")
        result.status, result.action, result.reason = "quarantined", "quarantined", reason
        result.error = record.error if record else None
        return result

    # We own the batch now.
    try:
        return _process_claimed(path, batch_id, ctx, result)
    except ContractError as exc:  # BatchRejected included: the input's fault, never retried
        _quarantine(path, ctx, batch_id, exc.reason, str(exc), result)
        return result
    except Exception as exc:  # infrastructure trouble: leave the file for a later retry
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:2000]
        log.warning("batch %s (%s) failed, will retry: %s", _short(batch_id), path.name, message)
        # The ledger's database may be what failed (e.g. PostgreSQL restarting). Wait for it (up to
        # LEDGER_RETRY_S) rather than give up: an unrecorded failure leaves the claim `processing`,
        # which blocks the batch until claim_timeout_s.
        try:
            record = _ledger_retry(lambda: ledger.get(batch_id))
            attempts = record.attempts if record else 1
            if attempts >= s.max_attempts:
                _ledger_retry(lambda: _quarantine(path, ctx, batch_id, "processing_failed",
                                                  f"gave up after {attempts} attempts: {message}", result))
                return result
            _ledger_retry(lambda: ledger.fail_retryable(batch_id, ctx.owner, message))
        except Exception as ledger_exc:  # still down: the claim is taken over after claim_timeout_s
            log.warning("could not record the failure of %s: %s", _short(batch_id), ledger_exc)
        result.status, result.error = "failed_retryable", message
        return result


LEDGER_RETRY_S = 30.0  # how long a failure waits to be recorded while the ledger is unreachable


def _ledger_retry(call: Callable[[], _T], *, budget_s: float = LEDGER_RETRY_S) -> _T:
    """``call()``, retried (0.5 s doubling to 5 s) for up to ``budget_s`` while the database is unreachable.

    Only connection-level errors are retried (``OperationalError``, ``InterfaceError``, an
    invalidated connection); ledger decisions such as ``LostClaim`` propagate at once.
    """
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    deadline = time.monotonic() + budget_s
    delay = 0.5
    while True:
        try:
            return call()
        except DBAPIError as exc:
            transient = isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated
            if not transient or time.monotonic() + delay > deadline:
                raise
            log.warning("ledger unreachable, retrying in %.1f s: %s", delay, str(exc).splitlines()[0])
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def retry_wait_s(record: object, s: Settings) -> float:
    """Seconds until a ``failed_retryable`` batch may be tried again (exponential backoff), else 0."""
    from poleng.ledger import BatchRecord, BatchStatus

    if not isinstance(record, BatchRecord) or record.status != BatchStatus.FAILED_RETRYABLE or not record.finished_at:
        return 0.0
    delay = min(s.retry_backoff_s * 2 ** max(record.attempts - 1, 0), s.retry_backoff_max_s)
    elapsed = (datetime.now(UTC) - record.finished_at).total_seconds()
    return max(delay - elapsed, 0.0)


def _handle_scored_again(path: Path, record: object, result: BatchResult, s: Settings) -> BatchResult:
    """Content already scored: either finish an interrupted move, or set the duplicate aside."""
    from poleng.ledger import BatchRecord

    assert isinstance(record, BatchRecord)
    processed_name = f"{_short(record.batch_id)}__{record.file_name}"
    result.rows_received, result.rows_valid = record.rows_received or 0, record.rows_valid or 0
    result.contacts, result.model_version = record.contacts or 0, record.model_version
    if record.file_name == path.name and not (s.processed / processed_name).exists():
        # The batch was completed but the process stopped before moving the original: finish that.
        _move(path, s.processed, processed_name)
        result.status, result.action = "scored", record.action or "scored"
        result.reason = "resumed: original moved to processed/"
        return result
    reason = f"duplicate of batch {_short(record.batch_id)} (first seen as {record.file_name})"
    _quarantine_file(path, s, record.batch_id, "duplicate", reason)
    result.status, result.action, result.reason = "duplicate", "duplicate", "duplicate"
    result.error = reason
    return result


def _quarantine_file(path: Path, s: Settings, batch_id: str, reason: str, detail: str) -> Path:
    """Move a file into ``quarantine/`` with a machine-readable ``<name>.reason.json`` beside it."""
    name = f"{_short(batch_id)}__{path.name}"
    _write_reason(
        s.quarantine / f"{name}.reason.json",
        {"file": path.name, "batch_id": batch_id, "reason": reason, "detail": detail,
         "at": datetime.now(UTC).isoformat(timespec="seconds")},
    )
    return _move(path, s.quarantine, name)


def _quarantine(path: Path, ctx: _Context, batch_id: str, reason: str, detail: str, result: BatchResult) -> None:
    """Record the quarantine in the ledger first, then move the file (a crash in between is resumed)."""
    ctx.ledger.quarantine(batch_id, path.name, reason, detail, ctx.owner,
                          rows_received=result.rows_received or None,
                          rows_rejected=result.rows_rejected or None,
                          rejected_rows_path=None)
    _quarantine_file(path, ctx.settings, batch_id, reason, detail)
    result.status, result.action, result.reason, result.error = "quarantined", "quarantined", reason, detail
    log.info("quarantined %s: %s", path.name, detail)


def _process_claimed(path: Path, batch_id: str, ctx: _Context, result: BatchResult) -> BatchResult:
    from poleng import scoring

    s, ledger = ctx.settings, ctx.ledger
    t = time.perf_counter()
    started = datetime.now(UTC)
    ledger.update(batch_id, started_at=started)

    # 1. validate -----------------------------------------------------------------------------
    raw = contract.read_table(path)
    result.rows_received = len(raw)
    checked = contract.validate_batch(raw, source=path.name)
    result.rows_valid, result.rows_rejected = len(checked.valid), len(checked.rejected)
    rejected_path = None
    if len(checked.rejected):
        rejected_path = s.quarantine / f"{_short(batch_id)}__{path.stem}.rejected-rows.csv"
        scoring.write_table(checked.rejected, rejected_path)
    if checked.bad_share > s.max_bad_row_share:
        raise BatchRejected(
            f"{path.name}: {len(checked.rejected)} of {checked.received} rows are bad "
            f"({checked.bad_share:.0%} > {s.max_bad_row_share:.0%}); most common: "
            f"{checked.rejected['reason'].str.split(';').explode().str.split('=').str[0].value_counts().index[0]}",
            reason="too_many_bad_rows",
        )
    valid = checked.valid
    result.durations["validate"] = time.perf_counter() - t
    _fault_point(s, "validate")

    # 2. score once with the champion ---------------------------------------------------------
    t = time.perf_counter()
    champion = scoring.load_champion(s)
    scores = champion.score(valid)
    result.durations["score"] = time.perf_counter() - t

    # 3. drift against the champion's cached reference -----------------------------------------
    t = time.perf_counter()
    verdict, html, json_path = _drift(valid, scores, champion, batch_id, s)
    result.drift, result.too_small, result.drift_summary = verdict.drifted, verdict.too_small, verdict.summary()
    result.report_html, result.report_json = str(html), str(json_path)
    result.durations["drift"] = time.perf_counter() - t
    ledger.update(batch_id, drift=verdict.drifted, drift_summary=result.drift_summary[:2000],
                  too_small=verdict.too_small, report_html=str(html), report_json=str(json_path))
    _fault_point(s, "drift")

    # 4. retrain on drift when labels wait -----------------------------------------------------
    action = "scored"
    alert = None
    if verdict.actionable and _debounced(verdict.actionable, ledger, s):
        t = time.perf_counter()
        ledger.heartbeat(batch_id, ctx.owner)
        retrain = retrain_on_drift(s, progress=False)
        ledger.heartbeat(batch_id, ctx.owner)
        result.durations["retrain"] = time.perf_counter() - t
        if retrain is None:
            action = "scored-under-drift"
            alert = (f"drift without enough labelled field data (need {s.retrain_min_field_rows} rows "
                     f"in {s.field_studies})")
        else:
            result.retrain = retrain
            action = "retrained-promoted" if retrain["promoted"] else "retrained-rejected"
            if retrain["promoted"]:
                t = time.perf_counter()
                champion = scoring.load_champion(s)
                scores = champion.score(valid)
                result.durations["score"] += time.perf_counter() - t
            else:
                alert = f"drift, and the retrained challenger was rejected: {retrain['reason']}"
    elif verdict.drifted and verdict.too_small:
        action = "scored-small-batch-drift"
    if alert:
        log.warning("ALERT batch %s (%s): %s", _short(batch_id), path.name, alert)
    _log_monitoring(s, verdict, html, json_path, alert, action)

    # 5. the contact file ----------------------------------------------------------------------
    t = time.perf_counter()
    scored_at = datetime.now(UTC).isoformat(timespec="seconds")
    contacts = scoring.contact_frame(
        valid, scores, threshold=s.decision_threshold, capacity=s.contact_capacity, batch_id=batch_id,
        model_name=s.model_name, model_version=champion.version, scored_at=scored_at,
    )
    stem = s.contacts / f"contacts__{path.stem}__{_short(batch_id)}"
    csv, parquet = scoring.write_contacts(contacts, stem)
    manifest = {
        "contract_version": scoring.CONTACT_CONTRACT_VERSION,
        "batch_id": batch_id, "source_file": path.name, "rows_valid": len(valid), "contacts": len(contacts),
        "threshold": s.decision_threshold, "capacity": s.contact_capacity,
        "model_name": s.model_name, "model_version": champion.version, "scored_at": scored_at,
        "csv": csv.name, "parquet": parquet.name, "csv_sha256": datasets.file_hash(csv),
    }
    _write_reason(stem.parent / f"{stem.name}.manifest.json", manifest)
    result.durations["write"] = time.perf_counter() - t
    _fault_point(s, "contacts")

    result.contacts, result.model_version, result.action = len(contacts), champion.version, action
    result.contact_csv, result.contact_parquet = str(csv), str(parquet)
    result.status = "scored"
    ledger.complete(
        batch_id, ctx.owner,
        rows_received=result.rows_received, rows_valid=result.rows_valid, rows_rejected=result.rows_rejected,
        contacts=len(contacts), action=action, model_version=champion.version,
        contact_csv=str(csv), contact_parquet=str(parquet),
        rejected_rows_path=str(rejected_path) if rejected_path else None,
        error=alert, durations_json={k: round(v, 4) for k, v in result.durations.items()},
    )
    _fault_point(s, "complete")
    # Only now does the original leave the inbox.
    _move(path, s.processed, f"{_short(batch_id)}__{path.name}")
    return result


def _fault_point(s: Settings, step: str) -> None:
    """Crash-test hook: with ``POLENG_FAULT_AFTER=<step>`` the process kills itself with SIGKILL here."""
    if s.fault_after == step:
        import signal

        log.warning("fault injection: SIGKILL after %s", step)
        os.kill(os.getpid(), signal.SIGKILL)


def _debounced(actionable: bool, ledger: Ledger, s: Settings) -> bool:
    """Retrain only when N of the last M batches (this one included) drifted."""
    if s.retrain_debounce_n <= 1:
        return actionable
    recent = [actionable, *ledger.recent_drift(s.retrain_debounce_m - 1)]
    return sum(bool(x) for x in recent) >= s.retrain_debounce_n


def _drift(valid: pd.DataFrame, scores: np.ndarray, champion: object, batch_id: str, s: Settings):  # noqa: ANN202
    from poleng import drift
    from poleng.scoring import LoadedModel

    assert isinstance(champion, LoadedModel)
    reference = drift.load_or_build_reference(s, champion.version, lambda: _reference_data(champion, s))
    verdict, evidence = drift.check_drift(reference, valid, scores, s, batch_id)
    html, json_path = drift.write_reports(verdict, evidence, s, batch_id)
    return verdict, html, json_path


def _reference_data(champion: object, s: Settings) -> tuple[pd.DataFrame, np.ndarray, dict[str, float]]:
    """The champion's training data, its scores on it, and its importances (built once per champion)."""
    from poleng import registry
    from poleng.scoring import LoadedModel

    assert isinstance(champion, LoadedModel)
    digest = registry.version_tags(s, champion.version)["training_data_hash"]
    train = datasets.load(digest, s)
    return train[contract.FEATURES], champion.score(train), champion.model.importances()


def _log_monitoring(s: Settings, verdict: object, html: Path, json_path: Path, alert: str | None,
                    action: str) -> None:
    """One monitoring run per batch; a rerun after a crash reuses the batch's existing run."""
    from poleng import drift, tracking

    assert isinstance(verdict, drift.DriftVerdict)
    existing = tracking.find_run(s, s.monitoring_experiment, {"batch_id": verdict.batch_id})
    run_id = existing or drift.log_monitoring_run(verdict, html, json_path, s)
    tags = {"action": action}
    if alert:
        tags |= {"alert": "true", "alert_text": alert[:4000]}
    tracking.set_tags(s, run_id, tags)


# ---------------------------------------------------------------------------------------------
# Retraining on drift
# ---------------------------------------------------------------------------------------------
def waiting_field_files(s: Settings) -> list[Path]:
    if not s.field_studies.exists():
        return []
    return sorted(p for p in s.field_studies.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in DATA_SUFFIXES)


def _pending_path(s: Settings) -> Path:
    return s.datasets / "pending_retrain.json"


def retrain_on_drift(s: Settings, *, progress: bool = False) -> dict[str, object] | None:
    """Merge waiting labelled field data into a new training set, retrain, apply the promotion rule.

    Returns None when fewer than ``retrain_min_field_rows`` valid labelled rows wait. Field files
    are moved to ``field_studies_used/`` once merged (invalid ones to ``quarantine/``), so each is
    merged once; a crash after the merge is resumed from ``datasets/pending_retrain.json``.
    """
    from poleng import lifecycle

    pending = _pending_path(s)
    if pending.exists():  # a retrain interrupted after its merge: finish moving its files, then train
        plan = json.loads(pending.read_text())
        for name in plan["files"]:
            if (s.field_studies / name).exists():
                _move(s.field_studies / name, s.field_used / str(plan["training_hash"])[:12], name)
    else:
        plan = _merge_field_data(s)
        if plan is None:
            return None
    ts = datasets.info(str(plan["training_hash"]), s)
    eval_slice = pd.read_parquet(s.datasets / f"eval-{plan['eval_hash']}.parquet")
    eval_sets = lifecycle.evaluation_sets(s, field_slice=eval_slice)
    outcome = lifecycle.train_and_decide(s, ts, reason="drift", progress=progress, eval_sets=eval_sets)
    if outcome.decision.promoted:
        datasets.set_current(s, ts)
        datasets.set_current_eval_slice(s, str(plan["eval_hash"]))
    pending.unlink(missing_ok=True)
    return {
        "version": outcome.version,
        "promoted": outcome.decision.promoted,
        "reason": outcome.decision.reason,
        "challenger_auc": outcome.decision.challenger_auc,
        "champion_auc": outcome.decision.champion_auc,
        "training_set": ts.short,
        "train_rows": ts.rows,
        "field_rows": plan["field_rows"],
        "champion_after": outcome.champion_after,
    }


def _merge_field_data(s: Settings) -> dict[str, object] | None:
    files = waiting_field_files(s)
    frames: list[pd.DataFrame] = []
    good: list[Path] = []
    for f in files:
        try:
            frames.append(contract.load_table(f, labelled=True))
            good.append(f)
        except ContractError as exc:
            _quarantine_file(f, s, datasets.file_hash(f), f"field_{exc.reason}", str(exc))
            log.warning("field data %s set aside: %s", f.name, exc)
    rows = sum(len(f) for f in frames)
    if rows < s.retrain_min_field_rows:
        return None
    field_rows = pd.concat(frames, ignore_index=True)
    # A slice of the new labelled data is kept out of training: it joins the frozen holdout as
    # the evaluation data on which champion and challenger are compared.
    rng = np.random.default_rng(s.seed + len(field_rows))
    is_eval = rng.random(len(field_rows)) < s.field_eval_share
    eval_hash = datasets.store_eval_slice(field_rows[is_eval], s, make_current=False)
    base_ts = datasets.current(s)
    if base_ts is None:
        raise RuntimeError("no current training set: run `poleng init` first")
    merged = datasets.merge(datasets.load(base_ts.hash, s), field_rows[~is_eval])
    ts = datasets.store(merged, s, parents=[base_ts.hash], sources=[f.name for f in good])
    plan = {"training_hash": ts.hash, "eval_hash": eval_hash, "field_rows": int(rows),
            "files": [f.name for f in good], "created": datetime.now(UTC).isoformat(timespec="seconds")}
    datasets.atomic_write_bytes(_pending_path(s), json.dumps(plan, indent=1).encode())
    used = s.field_used / ts.short
    for f in good:
        _move(f, used, f.name)
    return plan
