"""Exactly once: reruns, renamed copies, SIGKILL at any step, two workers, and a PostgreSQL ledger."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from poleng import contract, flow, lifecycle, scoring
from poleng.ledger import Ledger
from poleng.settings import Settings
from tests.conftest import make_settings, subprocess_env
from tests.pg import isolated_schema


def stage(s: Settings, name: str, start: int, rows: int = 2500) -> Path:
    pool = lifecycle.prepare_source(s).initial_pool
    frame = pool.iloc[start:start + rows][contract.BATCH_COLUMNS]
    assert len(frame) == rows, f"the initial pool has only {len(pool)} rows"
    s.inbox.mkdir(parents=True, exist_ok=True)
    path = s.inbox / name
    scoring.write_table(frame, path)
    return path


def contact_sets(s: Settings) -> list[Path]:
    return sorted(s.contacts.glob("*.csv"))


def completed_events(s: Settings, batch_id: str) -> int:
    ledger = Ledger(s.resolved_ledger_url)
    try:
        return sum(1 for e in ledger.events(batch_id) if e.event == "completed")
    finally:
        ledger.close()


def test_rerun_and_copies_under_other_names_are_duplicates(fresh_state: Settings) -> None:
    s = fresh_state
    path = stage(s, "a.parquet", 0)
    original = path.read_bytes()
    (first,) = flow.process_inbox(s)
    assert first.status == "scored"
    assert flow.process_inbox(s) == []  # nothing left to do
    # The same content again, under a new name and under the old one.
    (s.inbox / "a-resent.parquet").write_bytes(original)
    (s.inbox / "a.parquet").write_bytes(original)
    again = flow.process_inbox(s)
    assert sorted(r.status for r in again) == ["duplicate", "duplicate"]
    assert {r.batch_id for r in again} == {first.batch_id}
    assert len(contact_sets(s)) == 1
    assert completed_events(s, first.batch_id) == 1
    assert len(list(s.quarantine.glob("*.reason.json"))) == 2


def test_same_batch_under_two_names_in_one_run(fresh_state: Settings) -> None:
    s = fresh_state
    path = stage(s, "b1.parquet", 0)
    shutil.copy(path, s.inbox / "b2.parquet")
    results = flow.process_inbox(s)
    assert sorted(r.status for r in results) == ["duplicate", "scored"]
    assert len(contact_sets(s)) == 1


@pytest.mark.parametrize("step", ["validate", "drift", "contacts", "complete"])
def test_sigkill_mid_batch_then_resume(fresh_state: Settings, step: str) -> None:
    s = fresh_state
    path = stage(s, "k.parquet", 0)
    batch_id = flow.datasets.file_hash(path)
    proc = subprocess.run([sys.executable, "-m", "poleng", "process"], capture_output=True, text=True,
                          env=subprocess_env(s, POLENG_FAULT_AFTER=step), timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert path.exists(), "a killed worker must leave the batch in the inbox"
    ledger = Ledger(s.resolved_ledger_url)
    record = ledger.get(batch_id)
    ledger.close()
    assert record is not None
    assert str(record.status) == ("scored" if step == "complete" else "processing")

    # A new worker takes the stale claim over (timeout 0 here instead of waiting 15 minutes).
    resumed = make_settings(s.home, claim_timeout_s=0)
    (result,) = flow.process_inbox(resumed)
    assert result.status == "scored"
    assert not path.exists() and len(list(s.processed.glob(f"{batch_id[:12]}__k.parquet"))) == 1
    assert len(contact_sets(s)) == 1 and len(list(s.contacts.glob("*.parquet"))) == 1
    contacts = pd.read_parquet(next(s.contacts.glob("*.parquet")))
    assert contacts["subject_id"].is_unique
    assert not list(s.contacts.glob(".*")), "no temporary files may remain"
    assert completed_events(s, batch_id) == 1
    ledger = Ledger(s.resolved_ledger_url)
    final = ledger.get(batch_id)
    ledger.close()
    assert final is not None and str(final.status) == "scored" and final.contacts == len(contacts)
    assert final.attempts == (1 if step == "complete" else 2)
    assert flow.process_inbox(resumed) == []


def test_two_processes_on_one_inbox_never_share_a_batch(fresh_state: Settings) -> None:
    s = fresh_state
    paths = [stage(s, f"w{i}.parquet", i * 600, rows=600) for i in range(4)]
    ids = {flow.datasets.file_hash(p) for p in paths}
    env = subprocess_env(s)
    procs = [subprocess.Popen([sys.executable, "-m", "poleng", "process"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert not list(s.inbox.glob("*.parquet"))
    assert not list(s.quarantine.glob("*"))
    assert len(contact_sets(s)) == 4
    for batch_id in ids:
        assert completed_events(s, batch_id) == 1
    ledger = Ledger(s.resolved_ledger_url)
    events = ledger.events()
    ledger.close()
    owners = {e.detail.split("owner=")[-1] for e in events if e.event == "completed"}
    assert len(owners) >= 1
    # Every file each worker saw was scored by it, or reported as another worker's.
    for out, _ in outs:
        assert "Traceback" not in out


def test_a_file_taken_by_another_worker_is_reported_gone(fresh_state: Settings) -> None:
    s = fresh_state
    path = stage(s, "g.parquet", 0)
    path.unlink()  # listed, then moved away by another worker before this one hashed it
    ledger = Ledger(s.resolved_ledger_url)
    result = flow.process_file(path, flow._Context(s, ledger, "w"))
    ledger.close()
    assert result.status == "gone" and result.reason == "handled by another worker"


def test_flow_on_a_postgresql_ledger(fresh_state: Settings, pg_url: str) -> None:
    with isolated_schema(pg_url, prefix="flow") as url:
        s = make_settings(fresh_state.home, ledger_url=url)
        path = stage(s, "pg.parquet", 0)
        original = path.read_bytes()
        (result,) = flow.process_inbox(s)
        assert result.status == "scored"
        (s.inbox / "pg-again.parquet").write_bytes(original)
        (dup,) = flow.process_inbox(s)
        assert dup.status == "duplicate"
        ledger = Ledger(url)
        assert ledger.dialect == "postgresql"
        record = ledger.get(result.batch_id)
        assert record is not None and str(record.status) == "scored" and record.contacts == result.contacts
        ledger.close()
