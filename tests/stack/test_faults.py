"""Fault injection on the real native stack: a service goes away while a batch is processed.

Setup (once per module): a champion trained by ``init_project`` against the stack's MLflow server
(PostgreSQL backend, artifacts proxied to SeaweedFS S3), the batch ledger on the stack's PostgreSQL
``ledger_db``. Every test works in its own copy of that POLENG_HOME with its own batch (rows sampled
at random from the initial pool, so its content hash, the ledger key, is new in the shared ledger).

1. MLflow server stopped: the champion cannot be resolved -> ``failed_retryable``, file kept, no
   contact file; an immediate rerun waits (backoff); after a restart the batch is scored once.
2. S3 stopped: the registry answers but the model's artifacts cannot be downloaded through the
   proxying server -> same expectations.
3. PostgreSQL (ledger and MLflow backend) restarted during the drift step: the run recovers
   transparently (``pool_pre_ping``) or ends retryable; either way scored exactly once.
4. PostgreSQL down at the moment the result is recorded (after the contact files): the failure is
   recorded once the database is back (``flow._ledger_retry``), so no ``processing`` claim is left
   stuck until ``claim_timeout_s``; the rerun rewrites the same contact files and completes.

The MLflow client's HTTP retries are cut to one (default: 7 with backoff, ~4 minutes) so that an
outage surfaces in seconds. Every stopped service is restarted in a ``finally``.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from poleng import contract, flow, lifecycle, scoring, stack, tracking
from poleng.ledger import BatchRecord, BatchStatus, Ledger
from poleng.settings import Settings
from tests.conftest import make_settings

if TYPE_CHECKING:  # the fixture's type; conftest itself is loaded by pytest
    from conftest import NativeStack

pytestmark = [pytest.mark.stack, pytest.mark.slow]

SUFFIX = uuid.uuid4().hex[:8]
BACKOFF_S = 3.0  # 1 s made the immediate `waiting_retry` check depend on machine load
BATCH_ROWS = 2500
# Seconds per test and per phase, printed at the end of the module.
TIMINGS: dict[str, dict[str, float]] = {}
# What the failures looked like (error texts), printed with the timings.
NOTES: dict[str, str] = {}


# --- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fast_mlflow_failures() -> Iterator[None]:
    """One HTTP retry instead of seven: an unreachable server fails a call in seconds, not minutes."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        mp.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        mp.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
        yield


def _settings(native_stack: NativeStack, home: Path) -> Settings:
    return make_settings(
        home,
        tracking_uri=native_stack.tracking_uri,
        ledger_url=stack.ledger_url(native_stack.settings),
        retry_backoff_s=BACKOFF_S,
        model_name=f"faults-{SUFFIX}",
        experiment=f"faults-training-{SUFFIX}",
        monitoring_experiment=f"faults-monitoring-{SUFFIX}",
    )


@pytest.fixture(scope="module")
def initialized(
    native_stack: NativeStack,
    fast_mlflow_failures: None,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Path]:
    """A POLENG_HOME whose champion lives on the stack's MLflow server."""
    home = tmp_path_factory.mktemp("faults") / "state"
    t0 = time.monotonic()
    scoring.clear_cache()
    tracking.reset_cache()
    lifecycle.init_project(_settings(native_stack, home), progress=False)
    TIMINGS["module setup"] = {"init_project": round(time.monotonic() - t0, 1)}
    yield home
    # No test may leave a service stopped for the rest of the session.
    states = {s.name: s for s in stack.status(native_stack.settings)}
    assert all(states[n].state == "running" and states[n].healthy for n in ("postgres", "s3", "mlflow")), states
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_sep("-", "fault tests: seconds per phase")
            for name, phases in TIMINGS.items():
                reporter.write_line(f"{name}: " + ", ".join(f"{k}={v}" for k, v in phases.items()))
            for key, text in NOTES.items():
                reporter.write_line(f"{key}: {text}")


@pytest.fixture
def home(
    native_stack: NativeStack,
    initialized: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Settings]:
    """A private copy of the initialised POLENG_HOME (same champion, same server, same ledger)."""
    target = tmp_path / "state"
    shutil.copytree(initialized, target)
    scoring.clear_cache()
    tracking.reset_cache()
    t0 = time.monotonic()
    TIMINGS[request.node.name] = {}
    yield _settings(native_stack, target)
    TIMINGS[request.node.name]["total"] = round(time.monotonic() - t0, 1)
    _ensure_up(native_stack)


# --- helpers -----------------------------------------------------------------------------------------------


def _ensure_up(native_stack: NativeStack) -> float:
    """Start whatever service of the stack is stopped (``up`` reuses running ones); return seconds."""
    t0 = time.monotonic()
    stack.up(native_stack.settings, with_mage=False, timeout=240, echo=lambda _msg: None)
    return round(time.monotonic() - t0, 1)


def _stop(native_stack: NativeStack, service: str) -> None:
    """Stop one service's process group, as ``stack.down`` would."""
    sig = signal.SIGINT if service == "postgres" else signal.SIGTERM  # SIGINT: PostgreSQL fast shutdown
    assert stack._stop_service(native_stack.settings, service, sig, stack.STOP_TIMEOUT_S), f"{service} not running"
    if service == "s3":
        stack._remove_weed_sockets(native_stack.settings)
    assert stack._running(native_stack.settings, service) is None


@contextmanager
def service_stopped(native_stack: NativeStack, service: str) -> Iterator[None]:
    """``service`` is down inside the block and running again after it, whatever happens."""
    _stop(native_stack, service)
    try:
        yield
    finally:
        _ensure_up(native_stack)


def stage(s: Settings, name: str = "survey.parquet") -> tuple[Path, str]:
    """A new batch in the inbox: random rows of the initial pool (new content = new ledger key)."""
    pool = lifecycle.prepare_source(s).initial_pool
    frame = pool.sample(n=min(BATCH_ROWS, len(pool)), random_state=secrets.randbelow(2**31))
    path = s.inbox / name
    s.inbox.mkdir(parents=True, exist_ok=True)
    scoring.write_table(frame[contract.BATCH_COLUMNS], path)
    return path, flow.datasets.file_hash(path)


def record(s: Settings, batch_id: str) -> BatchRecord:
    with Ledger(s.resolved_ledger_url) as ledger:
        rec = ledger.get(batch_id)
    assert rec is not None
    return rec


def events(s: Settings, batch_id: str, name: str) -> int:
    with Ledger(s.resolved_ledger_url) as ledger:
        return sum(1 for e in ledger.events(batch_id) if e.event == name)


def temp_files(s: Settings) -> list[Path]:
    """Leftovers of atomic writes (``.<name>.tmp-<pid>`` / ``.<name>.<hex>.tmp``) anywhere in the home."""
    return [p for p in s.home.rglob("*") if ".tmp" in p.name]


def contact_files(s: Settings) -> list[str]:
    return sorted(p.name for p in s.contacts.iterdir()) if s.contacts.exists() else []


def run(s: Settings) -> flow.BatchResult:
    (result,) = flow.process_inbox(s)
    return result


def wait_for_retry(s: Settings, batch_id: str) -> None:
    time.sleep(flow.retry_wait_s(record(s, batch_id), s) + 0.1)


def assert_left_for_retry(s: Settings, path: Path, batch_id: str, result: flow.BatchResult) -> None:
    """A retryable failure: file still in the inbox, nothing written, the ledger says why."""
    assert result.status == "failed_retryable", result
    assert result.error
    assert path.exists(), "the batch must stay in the inbox"
    assert contact_files(s) == [], "no contact file (nor a temporary one) after a failure before writing"
    assert temp_files(s) == []
    rec = record(s, batch_id)
    assert rec.status is BatchStatus.FAILED_RETRYABLE, rec
    assert rec.claimed_by is None and rec.error == result.error
    assert rec.attempts == 1


def assert_scored_once(s: Settings, path: Path, batch_id: str, result: flow.BatchResult, attempts: int) -> None:
    """Scored exactly once: one contact file set under final names, one completion, nothing left over."""
    assert result.status == "scored", result
    assert not path.exists()
    assert (s.processed / f"{batch_id[:12]}__{path.name}").exists()
    stem = f"contacts__{path.stem}__{batch_id[:12]}"
    assert contact_files(s) == [f"{stem}.csv", f"{stem}.manifest.json", f"{stem}.parquet"]
    assert temp_files(s) == []
    rec = record(s, batch_id)
    assert rec.status is BatchStatus.SCORED and rec.attempts == attempts, rec
    assert rec.error is None and rec.contacts == result.contacts
    assert events(s, batch_id, "completed") == 1
    assert flow.process_inbox(s) == []  # nothing left, nothing stuck


def _service_outage_case(
    native_stack: NativeStack, s: Settings, monkeypatch: pytest.MonkeyPatch, service: str, name: str
) -> None:
    """Cases 1 and 2: ``service`` stops while a batch is processed, before the champion is fetched.

    ``process_inbox`` loads the champion before claiming anything (fail fast), so the outage is
    injected after that check and after the claim (fault point ``validate``), with the model cache
    cleared: the champion must then come from the server.
    """
    timings = TIMINGS[name]
    path, batch_id = stage(s)
    stopped: list[bool] = []

    def stop_service(_s: Settings, step: str) -> None:
        if step == "validate" and not stopped:
            _stop(native_stack, service)
            scoring.clear_cache()
            stopped.append(True)

    monkeypatch.setattr(flow, "_fault_point", stop_service)
    try:
        t0 = time.monotonic()
        first = run(s)
        timings["batch until failed_retryable"] = round(time.monotonic() - t0, 1)
        # At once again: the batch waits out its backoff and is not claimed.
        with Ledger(s.resolved_ledger_url) as ledger:
            again = flow.process_file(path, flow._Context(s, ledger, flow.owner_id()))
        assert again.status == "waiting_retry", again
        assert stopped, "the fault was not injected"
        assert_left_for_retry(s, path, batch_id, first)
        NOTES[f"{name}: error recorded"] = first.error or ""
        # A new run while the service is still down fails fast, before claiming anything.
        t0 = time.monotonic()
        with pytest.raises(Exception) as refused:  # NoChampionError (MLflow down) or MlflowException (S3)
            flow.process_inbox(s)
        timings["run refused while down"] = round(time.monotonic() - t0, 1)
        NOTES[f"{name}: run while down"] = f"{refused.type.__name__}: {refused.value}".splitlines()[0][:300]
        rec = record(s, batch_id)
        assert rec.status is BatchStatus.FAILED_RETRYABLE and rec.attempts == 1, rec
        assert path.exists() and contact_files(s) == []
    finally:
        t0 = time.monotonic()
        _ensure_up(native_stack)
        timings[f"{service} restart"] = round(time.monotonic() - t0, 1)
    monkeypatch.setattr(flow, "_fault_point", lambda _s, _step: None)
    wait_for_retry(s, batch_id)
    t0 = time.monotonic()
    final = run(s)
    timings["recovery run"] = round(time.monotonic() - t0, 1)
    assert_scored_once(s, path, batch_id, final, attempts=2)


# --- the cases -----------------------------------------------------------------------------------------


def test_mlflow_server_down(native_stack: NativeStack, home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    _service_outage_case(native_stack, home, monkeypatch, "mlflow", "test_mlflow_server_down")


def test_s3_down(native_stack: NativeStack, home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    _service_outage_case(native_stack, home, monkeypatch, "s3", "test_s3_down")


def test_postgres_restarted_mid_batch(
    native_stack: NativeStack, home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stop + start PostgreSQL right after the drift step (ledger row updated, result not yet recorded)."""
    s, timings = home, TIMINGS["test_postgres_restarted_mid_batch"]
    path, batch_id = stage(s)
    restarts: list[float] = []

    def restart_postgres(_s: Settings, step: str) -> None:
        if step == "drift" and not restarts:
            t0 = time.monotonic()
            _stop(native_stack, "postgres")
            restarts.append(_ensure_up(native_stack))
            timings["pg restart"] = round(time.monotonic() - t0, 1)

    monkeypatch.setattr(flow, "_fault_point", restart_postgres)
    try:
        t0 = time.monotonic()
        first = run(s)
        timings["batch"] = round(time.monotonic() - t0, 1)
    finally:
        _ensure_up(native_stack)
    assert restarts, "the fault was not injected"
    assert first.status in {"scored", "failed_retryable"}, first
    attempts = 1
    if first.status == "failed_retryable":  # acceptable: then it must be recorded, not stuck
        assert_left_for_retry(s, path, batch_id, first)
        wait_for_retry(s, batch_id)
        first = run(s)
        attempts = 2
    timings["outcome: retried"] = float(attempts - 1)
    assert_scored_once(s, path, batch_id, first, attempts=attempts)


def test_postgres_down_when_result_is_recorded(
    native_stack: NativeStack, home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL stops after the contact files are written and comes back ~5 s later.

    ``ledger.complete`` fails; the failure must still reach the ledger (retried until the database
    answers) instead of leaving a ``processing`` claim that blocks the batch for ``claim_timeout_s``.
    """
    s, timings = home, TIMINGS["test_postgres_down_when_result_is_recorded"]
    path, batch_id = stage(s)
    restarter: list[threading.Timer] = []

    def stop_postgres(_s: Settings, step: str) -> None:
        if step == "contacts" and not restarter:
            _stop(native_stack, "postgres")
            timer = threading.Timer(5.0, _ensure_up, args=(native_stack,))
            timer.start()
            restarter.append(timer)

    monkeypatch.setattr(flow, "_fault_point", stop_postgres)
    try:
        t0 = time.monotonic()
        first = run(s)
        timings["batch (incl. 5 s outage)"] = round(time.monotonic() - t0, 1)
    finally:
        for timer in restarter:
            timer.join()
        _ensure_up(native_stack)
    assert restarter, "the fault was not injected"
    assert first.status == "failed_retryable", first
    assert "OperationalError" in (first.error or ""), first.error
    assert path.exists()
    assert temp_files(s) == []
    rec = record(s, batch_id)
    assert rec.status is BatchStatus.FAILED_RETRYABLE and rec.claimed_by is None, rec
    assert events(s, batch_id, "completed") == 0
    monkeypatch.setattr(flow, "_fault_point", lambda _s, _step: None)
    wait_for_retry(s, batch_id)
    t0 = time.monotonic()
    final = run(s)
    timings["recover"] = round(time.monotonic() - t0, 1)
    assert_scored_once(s, path, batch_id, final, attempts=2)
