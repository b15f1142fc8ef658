"""Units of our own code: settings, contact frame, retry backoff, features, scenario files."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from poleng import features, flow, scenarios, scoring
from poleng.contract import FEATURES
from poleng.ledger import BatchRecord, BatchStatus
from poleng.settings import Settings
from tests.code.test_contract import batch, table
from tests.conftest import make_settings


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("POLENG_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("POLENG_PROFILE", "full")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    monkeypatch.setenv("POLENG_DECISION_THRESHOLD", "0.4")
    s = Settings(_env_file=None)
    assert s.home == tmp_path / "h" and s.inbox == tmp_path / "h" / "inbox"
    assert s.n_trials == 40 and s.decision_threshold == 0.4
    assert s.resolved_tracking_uri == "http://127.0.0.1:5999" and not s.is_embedded
    assert s.resolved_ledger_url == f"sqlite:///{tmp_path / 'h' / 'ledger.db'}"


def test_embedded_default(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    assert s.is_embedded and s.resolved_tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_bad_setting_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLENG_PROFILE", "huge")
    with pytest.raises(ValueError, match="profile"):
        Settings(_env_file=None)


def _contacts(scores: list[float], capacity: int | None = None) -> pd.DataFrame:
    b = batch(len(scores))
    return scoring.contact_frame(b, np.array(scores), threshold=0.5, capacity=capacity, batch_id="b" * 64,
                                 model_name="m", model_version="3", scored_at="2026-12-03T00:00:00+00:00")


def test_contact_frame_threshold_rank_and_capacity() -> None:
    out = _contacts([0.2, 0.9, 0.5, 0.7, 0.49999, 0.9])
    assert list(out.columns) == scoring.CONTACT_COLUMNS
    assert out["score"].tolist() == [0.9, 0.9, 0.7, 0.5]
    assert out["rank"].tolist() == [1, 2, 3, 4]
    assert out.loc[0, "subject_id"] < out.loc[1, "subject_id"]  # ties broken by subject_id
    assert (out["model_version"] == "3").all() and out["education"].dtype == "int64"
    capped = _contacts([0.2, 0.9, 0.5, 0.7], capacity=2)
    assert capped["score"].tolist() == [0.9, 0.7]


def test_retry_backoff_doubles_and_is_capped(tmp_path: Path) -> None:
    s = make_settings(tmp_path, retry_backoff_s=10, retry_backoff_max_s=25)
    now = datetime.now(UTC)
    record = BatchRecord(
        batch_id="x", file_name="f", status=BatchStatus.FAILED_RETRYABLE, claimed_by=None, claimed_at=None,
        attempts=1, rows_received=None, rows_valid=None, rows_rejected=None, contacts=None, drift=None,
        drift_summary=None, too_small=None, action=None, model_version=None, contact_csv=None,
        contact_parquet=None, rejected_rows_path=None, report_html=None, report_json=None,
        quarantine_reason=None, error="boom", received_at=now, started_at=None, finished_at=now,
        durations_json=None,
    )
    assert 9 < flow.retry_wait_s(record, s) <= 10
    assert 19 < flow.retry_wait_s(replace(record, attempts=2), s) <= 20
    assert 24 < flow.retry_wait_s(replace(record, attempts=5), s) <= 25
    assert flow.retry_wait_s(replace(record, finished_at=now - timedelta(seconds=11)), s) == 0
    assert flow.retry_wait_s(replace(record, status=BatchStatus.SCORED), s) == 0
    assert flow.retry_wait_s(None, s) == 0


def test_features_freeze_categories_and_map_unseen_codes_to_missing() -> None:
    train = table(200)
    spec = features.fit_spec(train)
    assert spec.categories["country"] == ["32", "76", "840"]
    later = train.head(3).copy()
    later["country"] = ["32", "999", "4"]
    x = features.transform(later, spec)
    assert list(x.columns) == FEATURES
    assert x["country"].isna().tolist() == [False, True, True]
    assert features.unseen_codes(later, spec) == {"country": {"999": 1, "4": 1}}
    assert features.FeatureSpec.from_json(spec.to_json()) == spec


def test_every_scenario_file_loads_and_states_expectations() -> None:
    names = scenarios.available()
    assert set(names) == {"clean_batches", "drift_batches", "drift_without_labels", "unreliable_source",
                          "bad_batches", "full_simulation"}
    for name in names:
        sc = scenarios.load(name)
        assert sc.description and sc.batches
        assert all(step.expect.get("status") for step in sc.batches), name


def test_unknown_scenario_is_a_clear_error() -> None:
    with pytest.raises(scenarios.ScenarioError, match="unknown scenario 'nope'; available: bad_batches"):
        scenarios.load("nope")


def test_retrain_debounce_counts_this_batch_and_the_last_ones(tmp_path: Path) -> None:
    from poleng.ledger import Ledger

    s = make_settings(tmp_path, retrain_debounce_n=2, retrain_debounce_m=3)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    for i, drifted in enumerate([True, False, False]):  # oldest first
        ledger.claim(f"{i:064d}", f"b{i}", "w")
        ledger.complete(f"{i:064d}", "w", drift=drifted)
    assert flow._debounced(True, ledger, s) is False  # last two clean: 1 of 3 drifted
    ledger.claim(f"{9:064d}", "b9", "w")
    ledger.complete(f"{9:064d}", "w", drift=True)
    assert flow._debounced(True, ledger, s) is True  # this one + the previous: 2 of 3
    assert flow._debounced(False, ledger, s) is False
    ledger.close()
