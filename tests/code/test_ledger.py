"""The batch ledger on embedded SQLite and on a real PostgreSQL: claim semantics and concurrency."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest

from poleng.ledger import BatchStatus, ClaimOutcome, Ledger, LostClaim, UnknownBatch
from tests.pg import isolated_schema

BACKENDS = ["sqlite", "postgresql"]


def bid(n: int | str) -> str:
    """A realistic batch id: sha256 hex of some bytes."""
    return hashlib.sha256(str(n).encode()).hexdigest()


@pytest.fixture(params=BACKENDS)
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty ledger database: a SQLite file, or a fresh schema on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state' / 'ledger.db'}"
    else:
        with isolated_schema(request.getfixturevalue("pg_url"), prefix="ledger") as url:
            yield url


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with Ledger(ledger_url) as led:
        yield led


def test_claim_new_batch(ledger: Ledger) -> None:
    claim = ledger.claim(bid(1), "a.csv", "w1")
    assert claim.outcome is ClaimOutcome.CLAIMED and claim.claimed
    rec = claim.record
    assert rec is not None and rec == ledger.get(bid(1))
    assert rec.status is BatchStatus.PROCESSING
    assert (rec.claimed_by, rec.attempts, rec.file_name) == ("w1", 1, "a.csv")
    assert rec.claimed_at is not None and rec.claimed_at.tzinfo is UTC
    assert rec.received_at == rec.started_at == rec.claimed_at
    assert [e.event for e in ledger.events(bid(1))] == ["claimed"]
    assert ledger.counts()["processing"] == 1
    assert ledger.get(bid(2)) is None


def test_tables_created_once_and_reopened(ledger_url: str) -> None:
    with Ledger(ledger_url) as first:
        first.claim(bid(1), "a.csv", "w1")
    with Ledger(ledger_url) as again:  # create_all on existing tables is a no-op
        rec = again.get(bid(1))
        assert rec is not None and rec.claimed_by == "w1"


def test_second_claim_is_busy(ledger: Ledger) -> None:
    assert ledger.claim(bid(1), "a.csv", "w1").claimed
    other = ledger.claim(bid(1), "copy-of-a.csv", "w2")
    assert other.outcome is ClaimOutcome.BUSY
    assert other.record is not None and other.record.claimed_by == "w1"
    # The holder itself does not get a second claim (one claim = one attempt).
    assert ledger.claim(bid(1), "a.csv", "w1").outcome is ClaimOutcome.BUSY
    rec = ledger.get(bid(1))
    assert rec is not None and (rec.attempts, rec.file_name) == (1, "a.csv")
    busy = [e for e in ledger.events(bid(1)) if e.event == "busy"]
    assert [e.file_name for e in busy] == ["copy-of-a.csv", "a.csv"]


def test_duplicate_after_complete(ledger: Ledger) -> None:
    ledger.claim(bid(1), "monday.csv", "w1")
    ledger.update(bid(1), rows_received=100, rows_valid=98, rows_rejected=2)
    ledger.complete(
        bid(1),
        "w1",
        contacts=40,
        drift=False,
        action="scored",
        model_version="3",
        contact_csv=Path("/x/contacts.csv"),
        durations_json={"validate": 0.5, "score": 1.25},
    )
    rec = ledger.get(bid(1))
    assert rec is not None and rec.status is BatchStatus.SCORED and rec.finished_at is not None
    assert (rec.rows_valid, rec.contacts, rec.contact_csv) == (98, 40, "/x/contacts.csv")
    assert rec.durations == {"score": 1.25, "validate": 0.5}

    dup = ledger.claim(bid(1), "monday-again.csv", "w2")
    assert dup.outcome is ClaimOutcome.DUPLICATE
    assert dup.record is not None and dup.record.file_name == "monday.csv"
    events = ledger.events(bid(1))
    assert [e.event for e in events] == ["claimed", "completed", "duplicate"]
    assert events[-1].file_name == "monday-again.csv"
    assert "monday-again.csv" in (events[-1].detail or "") and "monday.csv" in (events[-1].detail or "")
    assert ledger.get(bid(1)) == rec  # a duplicate sighting changes nothing on the row


def test_takeover_after_timeout(ledger: Ledger) -> None:
    ledger.claim(bid(1), "a.csv", "crashed")
    time.sleep(0.002)
    assert ledger.claim(bid(1), "a.csv", "w2", claim_timeout_s=3600).outcome is ClaimOutcome.BUSY
    taken = ledger.claim(bid(1), "a.csv", "w2", claim_timeout_s=0)
    assert taken.outcome is ClaimOutcome.CLAIMED
    assert taken.record is not None and (taken.record.claimed_by, taken.record.attempts) == ("w2", 2)
    with pytest.raises(LostClaim):  # the crashed worker came back: it may not finish
        ledger.complete(bid(1), "crashed", action="scored")
    with pytest.raises(LostClaim):
        ledger.heartbeat(bid(1), "crashed")
    ledger.heartbeat(bid(1), "w2")
    ledger.complete(bid(1), "w2", action="scored")
    assert ledger.counts()["scored"] == 1


def test_takeover_after_fail_retryable(ledger: Ledger) -> None:
    ledger.claim(bid(1), "a.csv", "w1")
    ledger.fail_retryable(bid(1), "w1", "mlflow unreachable")
    rec = ledger.get(bid(1))
    assert rec is not None and rec.status is BatchStatus.FAILED_RETRYABLE
    assert (rec.claimed_by, rec.claimed_at, rec.error) == (None, None, "mlflow unreachable")
    with pytest.raises(LostClaim):  # released: not even the old owner holds it now
        ledger.fail_retryable(bid(1), "w1", "again")
    again = ledger.claim(bid(1), "a.csv", "w2")  # no timeout needed
    assert again.outcome is ClaimOutcome.CLAIMED
    assert again.record is not None and again.record.attempts == 2
    assert [e.event for e in ledger.events(bid(1))] == ["claimed", "failed_retryable", "claimed"]
    ledger.complete(bid(1), "w2", action="scored")
    done = ledger.get(bid(1))
    assert done is not None and done.error is None and done.attempts == 2


def test_release_makes_claimable(ledger: Ledger) -> None:
    ledger.claim(bid(1), "a.csv", "w1")
    with pytest.raises(LostClaim):
        ledger.release(bid(1), "w2")
    ledger.release(bid(1), "w1")
    assert ledger.get(bid(1)).status is BatchStatus.RECEIVED  # type: ignore[union-attr]
    assert ledger.claim(bid(1), "a.csv", "w2").claimed


def test_complete_by_non_owner_raises(ledger: Ledger) -> None:
    ledger.claim(bid(1), "a.csv", "w1")
    with pytest.raises(LostClaim):
        ledger.complete(bid(1), "intruder", action="scored")
    rec = ledger.get(bid(1))
    assert rec is not None and rec.status is BatchStatus.PROCESSING
    ledger.complete(bid(1), "w1", action="scored")
    with pytest.raises(LostClaim):  # completing twice is not allowed either
        ledger.complete(bid(1), "w1", action="scored")
    with pytest.raises(UnknownBatch):
        ledger.complete(bid(99), "w1")


def test_update_rejects_unknown_and_managed_columns(ledger: Ledger) -> None:
    ledger.claim(bid(1), "a.csv", "w1")
    with pytest.raises(ValueError, match="unknown"):
        ledger.update(bid(1), no_such_column=1)
    with pytest.raises(ValueError, match="not settable"):
        ledger.update(bid(1), status="scored")
    with pytest.raises(ValueError, match="not settable"):
        ledger.complete(bid(1), "w1", claimed_by="someone")
    with pytest.raises(UnknownBatch):
        ledger.update(bid(2), rows_valid=1)


def test_quarantine_then_reclaim(ledger: Ledger) -> None:
    ledger.claim(bid(1), "bad.csv", "w1")
    ledger.quarantine(bid(1), "bad.csv", "too_many_bad_rows", "31% of rows invalid", "w1", rows_rejected=31)
    rec = ledger.get(bid(1))
    assert rec is not None and rec.status is BatchStatus.QUARANTINED
    assert (rec.quarantine_reason, rec.action, rec.rows_rejected) == ("too_many_bad_rows", "quarantined", 31)

    again = ledger.claim(bid(1), "bad-renamed.csv", "w2", claim_timeout_s=0)
    assert again.outcome is ClaimOutcome.QUARANTINED_BEFORE
    events = ledger.events(bid(1))
    assert [e.event for e in events] == ["claimed", "quarantined", "quarantined_before"]
    assert events[-1].file_name == "bad-renamed.csv" and "bad.csv" in (events[-1].detail or "")


def test_quarantine_without_claim(ledger: Ledger) -> None:
    # A file rejected before any claim (e.g. unreadable) still gets its ledger row.
    ledger.quarantine(bid(1), "junk.bin", "unreadable", "not a CSV or Parquet file", owner=None)
    assert ledger.claim(bid(1), "junk.bin", "w1").outcome is ClaimOutcome.QUARANTINED_BEFORE
    # ... but a scored batch or a live claim is never overwritten by an unowned quarantine.
    ledger.claim(bid(2), "ok.csv", "w1")
    with pytest.raises(LostClaim):
        ledger.quarantine(bid(2), "ok.csv", "unreadable", "x", owner=None)
    ledger.complete(bid(2), "w1", action="scored")
    with pytest.raises(LostClaim):
        ledger.quarantine(bid(2), "ok.csv", "unreadable", "x", owner=None)
    with pytest.raises(LostClaim):  # an owner that does not hold the claim
        ledger.quarantine(bid(2), "ok.csv", "unreadable", "x", owner="w1")
    assert ledger.counts() == {
        "received": 0,
        "processing": 0,
        "scored": 1,
        "quarantined": 1,
        "failed_retryable": 0,
    }


def test_recent_drift_and_list_order(ledger: Ledger) -> None:
    verdicts = [True, False, None, True, False]  # in completion order; None = not checked
    for i, drift in enumerate(verdicts):
        ledger.claim(bid(i), f"b{i}.csv", "w1")
        ledger.complete(bid(i), "w1", drift=drift, action="scored")
    ledger.claim(bid(10), "q.csv", "w1")
    ledger.quarantine(bid(10), "q.csv", "schema", "missing columns", "w1")

    assert ledger.recent_drift(10) == [False, True, False, True]  # newest first, NULL skipped
    assert ledger.recent_drift(2) == [False, True]
    assert ledger.recent_drift(0) == []
    assert [r.file_name for r in ledger.list()] == ["q.csv", "b4.csv", "b3.csv", "b2.csv", "b1.csv", "b0.csv"]
    assert [r.file_name for r in ledger.list(limit=2)] == ["q.csv", "b4.csv"]
    assert len(ledger.events()) == 2 * 6


def test_threads_share_one_ledger(ledger: Ledger) -> None:
    ids = [bid(i) for i in range(15)]
    won: list[tuple[str, str]] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def worker(owner: str) -> None:
        start.wait()
        for b in ids:
            if ledger.claim(b, f"{owner}.csv", owner).claimed:
                with lock:
                    won.append((b, owner))

    threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(b for b, _ in won) == sorted(ids)
    rows = {r.batch_id: r for r in ledger.list()}
    assert all(rows[b].claimed_by == owner and rows[b].attempts == 1 for b, owner in won)


# --- two OS processes racing for the same batches ---------------------------------------------------
WORKER = r"""
import json, sys, time
from pathlib import Path
from poleng.ledger import Ledger

url, owner, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
n, complete = int(sys.argv[4]), sys.argv[5] == "1"
ids = [f"{i:064x}" for i in range(n)]
print("ready", flush=True)
while not go.exists():
    time.sleep(0.0005)
ledger = Ledger(url)  # both processes may create the tables at the same moment
claimed, outcomes = [], {}
for b in ids:
    c = ledger.claim(b, f"{owner}-{b[-4:]}.csv", owner)
    outcomes[c.outcome.value] = outcomes.get(c.outcome.value, 0) + 1
    if c.claimed:
        claimed.append(b)
        if complete:
            ledger.complete(b, owner, action="scored", drift=False)
ledger.close()
print(json.dumps({"claimed": claimed, "outcomes": outcomes}), flush=True)
"""


@pytest.mark.parametrize("mode", ["new", "takeover"])
def test_two_processes_claim_each_batch_once(ledger_url: str, tmp_path: Path, mode: str) -> None:
    """``new``: both insert the same fresh ids (and complete what they win), tables not yet created.
    ``takeover``: every id is ``failed_retryable``, both race through the conditional UPDATE."""
    n = 20
    ids = [f"{i:064x}" for i in range(n)]
    if mode == "takeover":
        with Ledger(ledger_url) as setup:
            for b in ids:
                setup.claim(b, f"{b[-4:]}.csv", "setup")
                setup.fail_retryable(b, "setup", "transient")
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                ledger_url,
                f"p{k}",
                str(go),
                str(n),
                "1" if mode == "new" else "0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(2)
    ]
    try:
        for p in procs:  # both interpreters are up and importing is done: start them together
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        go.touch()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()

    wins = Counter(b for r in results for b in r["claimed"])
    assert set(wins) == set(ids) and set(wins.values()) == {1}, wins
    outcomes: Counter[str] = Counter()
    for r in results:
        outcomes.update(r["outcomes"])
    assert outcomes["claimed"] == n and sum(outcomes.values()) == 2 * n
    assert set(outcomes) <= {"claimed", "busy", "duplicate"}, outcomes
    with Ledger(ledger_url) as check:
        expected_attempts = 1 if mode == "new" else 2
        for b in ids:
            rec = check.get(b)
            assert rec is not None and rec.attempts == expected_attempts
            assert rec.claimed_by in ("p0", "p1")
        claims = [e for e in check.events() if e.event == "claimed" and e.detail and "owner=p" in e.detail]
        assert len(claims) == n


def test_clear_empties_batches_and_events(ledger: Ledger) -> None:
    ledger.claim(bid(1), "a.parquet", "w1")
    ledger.complete(bid(1), "w1", contacts=3)
    assert ledger.list() and ledger.events()
    ledger.clear()
    assert ledger.list() == [] and ledger.events() == []
    assert ledger.claim(bid(1), "a.parquet", "w2").outcome == "claimed"
