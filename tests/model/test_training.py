"""A quick-profile training: registered version, metrics, artifacts, lineage; unseen codes at scoring."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mlflow
from mlflow import MlflowClient
from poleng import contract, datasets, registry, scoring
from poleng.settings import Settings
from tests.conftest import make_settings

METRICS = ["roc_auc", "log_loss", "brier", "precision_at_threshold", "recall_at_threshold", "contact_rate"]


@pytest.fixture
def state(initialized_home: Path) -> Settings:
    scoring.clear_cache()
    return make_settings(initialized_home)


def test_init_registers_a_champion_with_metrics_artifacts_and_lineage(state: Settings) -> None:
    versions = registry.list_versions(state)
    assert [v.version for v in versions] == ["1"]
    v1 = versions[0]
    assert v1.aliases == ["challenger", "champion"]
    assert v1.tags["decision"] == "promoted" and v1.tags["decision_reason"] == "first champion"
    for m in METRICS:
        assert f"test_{m}" in v1.metrics, m
    assert 0.70 < v1.metrics["test_roc_auc"] < 0.90

    client = MlflowClient(state.resolved_tracking_uri)
    run = client.get_run(v1.run_id)
    digest = run.data.tags["training_data_hash"]
    assert run.data.tags["git_commit"] != ""
    assert run.data.params["training_data_hash"] == digest
    # The dataset input records the training set by its content hash.
    inputs = run.inputs.dataset_inputs
    assert inputs and inputs[0].dataset.digest == digest[:12]
    # The stored training set is immutable and its content matches its name.
    path = state.datasets / f"{digest}.parquet"
    assert not os.stat(path).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert datasets.content_hash(pd.read_parquet(path)) == digest
    assert int(run.data.params["train_rows"]) == len(pd.read_parquet(path))

    artifacts = {a.path for a in client.list_artifacts(v1.run_id, "plots")}
    assert artifacts == {"plots/roc_curve.png", "plots/calibration.png", "plots/feature_importance.png"}

    # One child run per Hyperopt trial, each with its validation figures.
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{v1.run_id}'")
    assert len(children) == state.n_trials
    for child in children:
        assert {"val_roc_auc", "val_log_loss", "best_iteration", "fit_seconds"} <= set(child.data.metrics)
        assert {"learning_rate", "max_depth", "subsample", "gamma"} <= set(child.data.params)

    # The registered model carries a signature and an input example, and loads by alias.
    mlflow.set_tracking_uri(state.resolved_tracking_uri)
    info = mlflow.models.get_model_info(registry.model_uri(state))
    assert info.signature is not None
    assert {c.name for c in info.signature.inputs.inputs} == set(contract.FEATURES)
    assert info.saved_input_example_info is not None


def test_unseen_codes_at_scoring_do_not_crash(state: Settings) -> None:
    from poleng import lifecycle

    splits = lifecycle.prepare_source(state)
    rows = splits.later_pool.head(200)[contract.BATCH_COLUMNS].copy()
    champion = scoring.load_champion(state)
    train_countries = set(champion.model.spec.categories["country"])
    assert not set(rows["country"]) & train_countries  # later countries were never seen in training
    rows.loc[rows.index[:5], "country"] = "999"
    scores = champion.score(rows)
    assert scores.shape == (200,) and np.isfinite(scores).all() and ((scores > 0) & (scores < 1)).all()


def test_score_command_keeps_every_other_column(state: Settings, tmp_path: Path) -> None:
    import subprocess
    import sys

    from poleng import lifecycle
    from tests.conftest import subprocess_env

    holdout = lifecycle.prepare_source(state).holdout.head(300).copy()
    holdout["note"] = "kept"
    src, dst = tmp_path / "in.csv", tmp_path / "out.parquet"
    holdout.to_csv(src, index=False)
    proc = subprocess.run([sys.executable, "-m", "poleng", "score", str(src), str(dst)], capture_output=True,
                          text=True, env=subprocess_env(state), timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = pd.read_parquet(dst)
    original = pd.read_csv(src, dtype=str)
    assert list(out.columns) == [*original.columns, "score"]
    pd.testing.assert_frame_equal(out.drop(columns="score"), original)
    expected = scoring.load_champion(state).score(contract.validate_table(holdout.drop(columns="note")))
    np.testing.assert_allclose(out["score"].to_numpy(), expected, rtol=1e-6)
