"""Promotion rule as code, and promote / reject / rollback on the real registry."""

from __future__ import annotations

import numpy as np
import pytest

from poleng import contract, datasets, flow, lifecycle, registry, scoring
from poleng.registry import PromotionRule, RegistryError
from poleng.settings import Settings

RULE = PromotionRule(min_auc=0.6, min_gain=0.005, brier_tolerance=0.005)


@pytest.mark.parametrize(
    ("challenger", "champion", "promoted", "why"),
    [
        ({"roc_auc": 0.70, "brier": 0.20}, None, True, "first champion"),
        ({"roc_auc": 0.55, "brier": 0.20}, None, False, "below floor"),
        ({"roc_auc": 0.706, "brier": 0.20}, {"roc_auc": 0.70, "brier": 0.20}, True, "gain +0.0060"),
        ({"roc_auc": 0.704, "brier": 0.20}, {"roc_auc": 0.70, "brier": 0.20}, False, "below required"),
        ({"roc_auc": 0.75, "brier": 0.206}, {"roc_auc": 0.70, "brier": 0.20}, False, "Brier"),
        ({"roc_auc": 0.75, "brier": 0.204}, {"roc_auc": 0.70, "brier": 0.20}, True, "gain"),
        ({"roc_auc": 0.59, "brier": 0.10}, {"roc_auc": 0.50, "brier": 0.20}, False, "below floor"),
    ],
)
def test_promotion_rule(challenger, champion, promoted: bool, why: str) -> None:
    decision = RULE.decide(challenger, champion)
    assert decision.promoted is promoted
    assert why in decision.reason


@pytest.mark.parametrize(
    ("segments", "promoted", "why"),
    [
        ({"holdout": 0.78, "field_slice": 0.74}, True, "gain"),
        ({"holdout": 0.78, "field_slice": 0.51}, False, "AUC on field_slice 0.5100 below floor"),
        ({"holdout": 0.55, "field_slice": 0.74}, False, "AUC on holdout 0.5500 below floor"),
    ],
)
def test_promotion_rule_floors_every_segment(segments: dict[str, float], promoted: bool, why: str) -> None:
    decision = RULE.decide({"roc_auc": 0.76, "brier": 0.18}, {"roc_auc": 0.70, "brier": 0.20}, segments)
    assert decision.promoted is promoted
    assert why in decision.reason


def test_challenger_built_to_lose_is_rejected_and_recorded(fresh_state: Settings) -> None:
    s = fresh_state
    current = datasets.current(s)
    assert current is not None
    noisy = datasets.load(current.hash, s)
    noisy[contract.LABEL] = np.random.default_rng(0).permutation(noisy[contract.LABEL].to_numpy())
    ts = datasets.store(noisy, s, parents=[current.hash], sources=["shuffled labels"])
    outcome = lifecycle.train_and_decide(s, ts, reason="test-loser", progress=False)
    assert outcome.version == "2"
    assert not outcome.decision.promoted
    assert registry.alias_version(s, registry.CHAMPION) == "1"
    assert registry.alias_version(s, registry.CHALLENGER) == "2"
    tags = registry.version_tags(s, "2")
    assert tags["decision"] == "rejected"
    assert float(tags["decision_challenger_auc"]) < float(tags["decision_champion_auc"])
    assert tags["decision_champion_version"] == "1"
    assert int(tags["decision_eval_rows"]) == len(lifecycle.evaluation_data(s))
    assert float(tags["decision_challenger_auc_holdout"]) < 0.6  # label noise: no better than chance
    with pytest.raises(RegistryError, match="no previous champion"):
        registry.rollback(s)


def test_promotion_then_rollback(fresh_state: Settings) -> None:
    s = fresh_state
    splits = lifecycle.prepare_source(s)
    s.field_studies.mkdir(parents=True, exist_ok=True)
    for i, chunk in enumerate(splits.field):
        scoring.write_table(chunk, s.field_studies / f"chunk{i}.parquet")
    result = flow.retrain_on_drift(s, progress=False)
    assert result is not None and result["promoted"] is True, result
    assert registry.alias_version(s, registry.CHAMPION) == "2"
    assert registry.alias_version(s, registry.PREVIOUS) == "1"
    assert not flow.waiting_field_files(s)  # field data is merged once, then moved aside
    assert len(list((s.field_used).rglob("*.parquet"))) == len(splits.field)
    tags = registry.version_tags(s, "2")
    assert tags["decision"] == "promoted"
    assert float(tags["decision_challenger_auc"]) >= float(tags["decision_champion_auc"]) + s.promotion_min_gain
    assert float(tags["decision_challenger_auc_field_slice"]) >= s.promotion_min_auc
    # The new champion recovers on the later countries.
    assert lifecycle.later_country_auc(s, "2") > lifecycle.later_country_auc(s, "1") + 0.05

    demoted, restored = registry.rollback(s)
    assert (demoted, restored) == ("2", "1")
    assert registry.alias_version(s, registry.CHAMPION) == "1"
    assert registry.alias_version(s, registry.PREVIOUS) is None
    assert "rolled_back_at" in registry.version_tags(s, "2")
    scoring.clear_cache()
    assert scoring.load_champion(s).version == "1"


def test_retrain_interrupted_after_the_merge_resumes_without_merging_twice(fresh_state: Settings) -> None:
    s = fresh_state
    splits = lifecycle.prepare_source(s)
    s.field_studies.mkdir(parents=True, exist_ok=True)
    for i, chunk in enumerate(splits.field):
        scoring.write_table(chunk, s.field_studies / f"chunk{i}.parquet")
    plan = flow._merge_field_data(s)  # the merge happened, then the process died before training
    assert plan is not None and (s.datasets / "pending_retrain.json").exists()
    used = s.field_used / str(plan["training_hash"])[:12]
    (used / "chunk0.parquet").rename(s.field_studies / "chunk0.parquet")  # ... even before moving them all
    result = flow.retrain_on_drift(s, progress=False)
    assert result is not None and result["training_set"] == str(plan["training_hash"])[:12]
    assert not flow.waiting_field_files(s) and len(list(used.glob("*.parquet"))) == len(splits.field)
    assert not (s.datasets / "pending_retrain.json").exists()
    assert flow.retrain_on_drift(s, progress=False) is None  # nothing left to merge
