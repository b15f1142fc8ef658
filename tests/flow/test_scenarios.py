"""Every scenario end to end on the embedded default, with exact assertions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from poleng import contract, datasets, flow, registry, scenarios, scoring
from poleng.ledger import Ledger
from poleng.settings import Settings


def _processed_file(s: Settings, batch_id: str) -> Path:
    (path,) = list(s.processed.glob(f"{batch_id[:12]}__*"))
    return path


def check_scored_batch(s: Settings, result: scenarios.BatchResult) -> None:
    """The contact file holds exactly the valid rows scoring at/above the threshold, ranked."""
    original = contract.read_table(_processed_file(s, result.batch_id))
    valid = contract.validate_batch(original).valid
    assert len(valid) == result.rows_valid
    model = scoring.load_version(s, str(result.model_version))
    scores = model.score(valid)
    expected = int((np.round(scores, 6) >= s.decision_threshold).sum())
    assert result.contacts == expected
    csv = pd.read_csv(result.contact_csv, dtype={"subject_id": str, "country": str, "sex": str,
                                                 "citizenship": str, "model_version": str})
    parquet = pd.read_parquet(result.contact_parquet)
    assert list(parquet.columns) == scoring.CONTACT_COLUMNS
    assert len(csv) == len(parquet) == expected
    pd.testing.assert_frame_equal(csv, parquet, check_dtype=False)
    assert (parquet["score"] >= s.decision_threshold).all()
    assert parquet["rank"].tolist() == list(range(1, expected + 1))
    assert parquet["score"].is_monotonic_decreasing
    assert set(parquet["subject_id"]) <= set(valid["subject_id"])
    assert (parquet["batch_id"] == result.batch_id).all()
    assert (parquet["model_version"] == str(result.model_version)).all()
    manifest = json.loads(Path(str(result.contact_csv).replace(".csv", ".manifest.json")).read_text())
    assert manifest["contacts"] == expected and manifest["batch_id"] == result.batch_id
    # Exactly one contact file set per batch.
    assert len(list(s.contacts.glob(f"*__{result.batch_id[:12]}.csv"))) == 1


def check_against_file_expectations(s: Settings, report: scenarios.SimulationReport) -> None:
    ledger = Ledger(s.resolved_ledger_url)
    try:
        for outcome in report.outcomes:
            if outcome.step.kind != "batch":
                continue
            r = outcome.result
            assert r is not None, outcome.file
            expect = outcome.step.expect
            assert r.status == expect["status"], (outcome.file, r)
            if "drift" in expect:
                assert r.drift is expect["drift"], (outcome.file, r.drift_summary)
            if "action" in expect:
                assert r.action == expect["action"], (outcome.file, r)
            if "reason" in expect:
                assert r.reason == expect["reason"], (outcome.file, r)
            if r.status == "scored":
                check_scored_batch(s, r)
                record = ledger.get(r.batch_id)
                assert record is not None and record.status == "scored"
                assert record.contacts == r.contacts and record.action == r.action
                assert not (s.inbox / outcome.file).exists()
            elif r.status in ("quarantined", "duplicate"):
                (moved,) = list(s.quarantine.glob(f"*__{outcome.file}"))
                reason = json.loads(Path(f"{moved}.reason.json").read_text())
                assert reason["reason"] == expect["reason"]
                assert reason["detail"]
        assert not flow.inbox_files(s), "nothing may stay in the inbox"
    finally:
        ledger.close()


@pytest.mark.slow
def test_clean_batches(fresh_state: Settings) -> None:
    report = scenarios.simulate("clean_batches", fresh_state)
    check_against_file_expectations(fresh_state, report)
    assert report.champion_before == report.champion_after == "1"
    assert {r.model_version for r in report.results} == {"1"}
    assert len(registry.list_versions(fresh_state)) == 1


@pytest.mark.slow
def test_drift_batches_retrain_promote_and_recover(fresh_state: Settings) -> None:
    s = fresh_state
    report = scenarios.simulate("drift_batches", s)
    check_against_file_expectations(s, report)
    first, *rest = report.results
    assert first.drift and "country" in first.drift_summary
    assert first.retrain is not None and first.retrain["promoted"] is True
    assert first.model_version == "2"  # the drifted batch itself is scored by the new champion
    assert all(r.drift is False and r.model_version == "2" for r in rest)
    assert (report.champion_before, report.champion_after) == ("1", "2")
    assert report.later_auc_after is not None and report.later_auc_before is not None
    assert report.later_auc_after > report.later_auc_before + 0.1
    assert not list(s.field_studies.glob("*.parquet"))  # merged once, moved aside
    assert registry.alias_version(s, registry.PREVIOUS) == "1"


@pytest.mark.slow
def test_drift_without_labels_scores_under_drift_and_alerts(fresh_state: Settings) -> None:
    from mlflow import MlflowClient

    s = fresh_state
    report = scenarios.simulate("drift_without_labels", s)
    check_against_file_expectations(s, report)
    assert report.champion_after == "1" and len(registry.list_versions(s)) == 1
    ledger = Ledger(s.resolved_ledger_url)
    for r in report.results:
        assert "drift without enough labelled field data" in (ledger.get(r.batch_id).error or "")
    ledger.close()
    client = MlflowClient(s.resolved_tracking_uri)
    exp = client.get_experiment_by_name(s.monitoring_experiment)
    runs = client.search_runs([exp.experiment_id], "tags.alert = 'true'")
    assert {run.data.tags["batch_id"] for run in runs} == {r.batch_id for r in report.results}


@pytest.mark.slow
def test_unreliable_source_challenger_rejected(fresh_state: Settings) -> None:
    s = fresh_state
    report = scenarios.simulate("unreliable_source", s)
    check_against_file_expectations(s, report)
    (r,) = report.results
    assert r.retrain is not None and r.retrain["promoted"] is False
    assert r.model_version == "1" and report.champion_after == "1"
    tags = registry.version_tags(s, "2")
    assert tags["decision"] == "rejected"
    assert "AUC on field_slice" in tags["decision_reason"] and "below floor" in tags["decision_reason"]
    # The corrupted set is kept for audit but does not become the base of the next training.
    assert registry.version_tags(s, "1")["training_data_hash"] == datasets.current(s).hash


@pytest.mark.slow
def test_bad_batches_each_set_aside_with_its_reason(fresh_state: Settings) -> None:
    s = fresh_state
    report = scenarios.simulate("bad_batches", s)
    check_against_file_expectations(s, report)
    by_name = {o.step.name: o.result for o in report.outcomes}
    some_bad = by_name["some-bad-rows"]
    assert some_bad.rows_rejected > 0 and some_bad.rows_valid + some_bad.rows_rejected == 2500
    (rejected_file,) = list(s.quarantine.glob("*some-bad-rows.rejected-rows.csv"))
    rejected = pd.read_csv(rejected_file, dtype=str)
    assert len(rejected) == some_bad.rows_rejected
    assert rejected["reason"].str.contains("unknown_code:").all()
    dup = by_name["good-1-resent"]
    assert dup.batch_id == by_name["good-1"].batch_id and dup.status == "duplicate"


@pytest.mark.slow
def test_full_simulation(fresh_state: Settings) -> None:
    s = fresh_state
    report = scenarios.simulate("full_simulation", s)
    check_against_file_expectations(s, report)
    actions = [r.action for r in report.results]
    assert actions.count("retrained-promoted") == 1
    assert (report.champion_before, report.champion_after) == ("1", "2")
