"""Tests of poleng.drift on small synthetic survey frames (Evidently is imported once, ~6 s)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from poleng import contract, drift
from poleng.settings import Settings

REF_COUNTRIES = ["4", "8", "12", "16", "20"]
REF_ROWS = 3_000
# Top-5 by gain: country (encoded names, summed), education, sex, religion, income_scale.
IMPORTANCES = {
    "country_4": 6.0,
    "country_8": 5.0,
    "education": 9.0,
    "sex": 4.0,
    "religion": 3.0,
    "income_scale": 2.0,
    "savings": 1.0,
    "mode": 0.5,
}


def _probs(column: str) -> np.ndarray:
    """Fixed, column-specific code probabilities (the same for reference and batches)."""
    lo, hi = contract.STRING_CODES.get(column) or contract.INTEGER_CODES[column]
    seed = contract.FEATURES.index(column)
    return np.random.default_rng(seed).dirichlet(np.full(hi - lo + 1, 5.0))


def survey(n: int, seed: int, countries: list[str] | None = None) -> pd.DataFrame:
    """``n`` contract-valid batch rows (features + subject_id), all columns from fixed distributions."""
    rng = np.random.default_rng(seed)
    data: dict[str, object] = {"country": rng.choice(countries or REF_COUNTRIES, size=n).astype(object)}
    for col in contract.FEATURES[1:]:
        lo, hi = contract.STRING_CODES.get(col) or contract.INTEGER_CODES[col]
        codes = rng.choice(np.arange(lo, hi + 1), size=n, p=_probs(col))
        data[col] = (
            codes.astype(str).astype(object) if col in contract.STRING_CODES else codes.astype("int64")
        )
    frame = pd.DataFrame(data)[contract.FEATURES]
    frame[contract.SUBJECT_ID] = [str(uuid.UUID(int=int(x))) for x in rng.integers(0, 2**62, size=n)]
    return frame


def model_scores(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    return np.clip(np.random.default_rng(seed).beta(2, 4, size=n) + shift, 0, 1)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(home=tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def reference(settings: Settings) -> drift.Reference:
    frame = survey(REF_ROWS, seed=1)
    return drift.build_reference(frame, model_scores(REF_ROWS, 2), IMPORTANCES, settings, "1")


def test_importing_the_module_does_not_import_evidently() -> None:
    code = "import sys, poleng.drift; assert 'evidently' not in sys.modules, 'evidently imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_importances_are_summed_per_feature() -> None:
    agg = drift.aggregate_importances(
        {"country_4": 1.0, "country=8": 2.0, "immigrant_mother_2": 3.0, "immigrant": 1.0, "bogus": 9.0}
    )
    assert agg == {"country": 3.0, "immigrant_mother": 3.0, "immigrant": 1.0}


def test_reference_top_features(reference: drift.Reference) -> None:
    assert reference.top_features(5) == ["country", "education", "sex", "religion", "income_scale"]
    assert reference.top_features(0) == []
    assert len(reference.top_features(50)) == 7  # zero-gain features are never top-k


def test_identical_distribution_no_drift(reference: drift.Reference, settings: Settings) -> None:
    verdict, _ = drift.check_drift(reference, survey(2_000, 3), model_scores(2_000, 4), settings, "same")
    assert not verdict.drifted and not verdict.actionable
    assert verdict.drifted_columns == []
    assert not verdict.dataset_drift and not verdict.prediction_drift and not verdict.contact_rate_moved
    assert all(not c.new_values for c in verdict.columns.values())
    assert set(verdict.columns) == set(contract.FEATURES)
    assert verdict.columns["country"].method == "jensenshannon"
    assert verdict.columns["education"].method == "wasserstein"
    assert verdict.score_distance < 0.05
    assert verdict.summary() == "no drift"


def test_new_country_drifts_country_and_counts_through_top_k(
    reference: drift.Reference, settings: Settings
) -> None:
    batch = survey(2_000, 5)
    batch.loc[:199, "country"] = "840"  # valid ISO code, never seen in the reference
    batch.loc[200:209, "country"] = "1000"  # invalid: not reported as a new value
    verdict, _ = drift.check_drift(reference, batch, model_scores(2_000, 6), settings, "new-country")
    country = verdict.columns["country"]
    assert country.drifted and country.new_values == {"840": 200}
    assert verdict.top_k_drifted == ["country"]
    assert verdict.dataset_drift and verdict.drifted and verdict.actionable
    assert verdict.summary().startswith("drift: country(new 1 value)")
    assert any("840" in r for r in verdict.reasons)

    # The same batch, when country is not among the champion's top-k, is one drifted column of 32.
    unimportant = dataclasses.replace(reference, importances={"education": 1.0})
    verdict, _ = drift.check_drift(unimportant, batch, model_scores(2_000, 6), settings, "new-country")
    assert verdict.columns["country"].drifted
    assert verdict.top_k_drifted == [] and not verdict.dataset_drift and not verdict.drifted
    assert verdict.summary().startswith("no drift (columns: country")


def test_new_value_of_an_integer_column(settings: Settings) -> None:
    frame = survey(REF_ROWS, seed=7)
    frame["education"] = frame["education"].clip(upper=8)
    ref = drift.build_reference(frame, model_scores(REF_ROWS, 2), IMPORTANCES, settings, "1")
    batch = survey(1_000, 8)
    batch["education"] = batch["education"].clip(upper=8)
    batch.loc[:4, "education"] = 9
    verdict, _ = drift.check_drift(ref, batch, model_scores(1_000, 9), settings, "edu9")
    assert verdict.columns["education"].new_values == {"9": 5}
    assert verdict.columns["education"].drifted and "education" in verdict.top_k_drifted


def test_shifted_numerical_column_drifts(reference: drift.Reference, settings: Settings) -> None:
    batch = survey(2_000, 10)
    batch["education"] = (batch["education"] + 2).clip(upper=9)
    verdict, _ = drift.check_drift(reference, batch, model_scores(2_000, 11), settings, "edu")
    edu = verdict.columns["education"]
    assert edu.kind == "numerical" and edu.drifted and not edu.new_values
    assert edu.distance >= settings.drift_num_threshold
    assert verdict.drifted_columns[0] == "education"
    assert verdict.top_k_drifted == ["education"] and verdict.drifted


def _degenerate(batch: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Every row of ``columns`` set to the least likely code: a clear shift of each."""
    for col in columns:
        lo, _ = contract.STRING_CODES.get(col) or contract.INTEGER_CODES[col]
        code = lo + int(np.argmin(_probs(col)))
        batch[col] = str(code) if col in contract.STRING_CODES else code
    return batch


@pytest.mark.parametrize(("n_shifted", "expected"), [(10, True), (9, False)])
def test_drift_share_rule(
    reference: drift.Reference, settings: Settings, n_shifted: int, expected: bool
) -> None:
    top = set(reference.top_features(settings.drift_top_k))
    others = [c for c in contract.FEATURES if c not in top and c not in IMPORTANCES]
    shifted = others[:n_shifted]
    batch = _degenerate(survey(2_000, 12), shifted)
    verdict, _ = drift.check_drift(reference, batch, model_scores(2_000, 13), settings, "share")
    assert sorted(verdict.drifted_columns) == sorted(shifted)
    assert verdict.top_k_drifted == []
    assert verdict.drift_share == pytest.approx(n_shifted / 32)
    assert verdict.dataset_drift is expected and verdict.drifted is expected
    assert any("columns drifted" in r for r in verdict.reasons) is expected


def test_small_batch_is_checked_but_not_actionable(reference: drift.Reference, settings: Settings) -> None:
    batch = survey(100, 14, countries=["840"])
    verdict, _ = drift.check_drift(reference, batch, model_scores(100, 15), settings, "small")
    assert verdict.rows == 100 and verdict.too_small
    assert verdict.columns["country"].new_values == {"840": 100}
    assert verdict.drifted and not verdict.actionable
    assert "too small" in verdict.summary() and any("too small" in r for r in verdict.reasons)


def test_prediction_drift_on_shifted_scores(reference: drift.Reference, settings: Settings) -> None:
    scores = model_scores(2_000, 16, shift=0.3)
    verdict, _ = drift.check_drift(reference, survey(2_000, 17), scores, settings, "scores")
    assert verdict.drifted_columns == [] and not verdict.dataset_drift
    assert verdict.score_distance == pytest.approx(0.3, abs=0.03)  # plain Wasserstein on [0, 1]
    assert verdict.prediction_drift and verdict.contact_rate_moved
    assert verdict.contact_rate_batch - verdict.contact_rate_reference > settings.drift_contact_rate_tolerance
    assert verdict.drifted and verdict.actionable
    assert verdict.summary().startswith("drift: scores 0.")


def test_bad_input_is_refused(reference: drift.Reference, settings: Settings) -> None:
    batch = survey(50, 18)
    with pytest.raises(ValueError, match="missing feature columns"):
        drift.check_drift(reference, batch.drop(columns=["religion"]), model_scores(50, 1), settings, "x")
    with pytest.raises(ValueError, match="scores"):
        drift.check_drift(reference, batch, model_scores(49, 1), settings, "x")


def test_reference_cache_built_once_per_version(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, drift_reference_rows=1_000)
    calls: list[int] = []
    frame = survey(4_000, 19)
    frame.loc[0, "country"] = "24"  # one rare row: may be left out of the sample, but is known
    scores = model_scores(4_000, 20)

    def build() -> tuple[pd.DataFrame, np.ndarray, dict[str, float]]:
        calls.append(1)
        return frame, scores, IMPORTANCES

    first = drift.load_or_build_reference(settings, "7", build)
    second = drift.load_or_build_reference(settings, "7", build)
    assert len(calls) == 1
    assert (tmp_path / "cache" / "reference-v7.parquet").exists()
    assert (tmp_path / "cache" / "reference-v7.json").exists()
    assert len(first.frame) == 1_000 and list(first.frame.columns) == [*contract.FEATURES, drift.SCORE]
    pd.testing.assert_frame_equal(first.frame, second.frame)
    assert first.frame["education"].dtype == "int64" and first.frame["sex"].dtype == object
    assert second.importances == first.importances and second.value_sets == first.value_sets
    assert "24" in second.value_sets["country"]
    assert second.contact_rate == pytest.approx(float(np.mean(scores >= settings.decision_threshold)))
    assert second.version == "7" and second.source_rows == 4_000

    drift.load_or_build_reference(settings, "8", build)
    assert len(calls) == 2
    # deterministic sample: another home gives the same reference rows
    other = drift.load_or_build_reference(
        Settings(home=tmp_path / "b", drift_reference_rows=1_000), "7", build
    )
    pd.testing.assert_frame_equal(other.frame, first.frame)


def test_write_reports_and_json_round_trip(reference: drift.Reference, settings: Settings) -> None:
    batch = survey(1_000, 21)
    batch.loc[:49, "country"] = "840"
    verdict, evidence = drift.check_drift(reference, batch, model_scores(1_000, 22), settings, "batch/01")
    html, json_path = drift.write_reports(verdict, evidence, settings, "batch/01")
    assert html == settings.reports / "batch_01.html" and json_path == settings.reports / "batch_01.json"
    assert html.stat().st_size > 10_000 and "<html" in html.read_text(encoding="utf-8")[:2000].lower()
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert drift.DriftVerdict.from_dict(data["verdict"]) == verdict
    assert data["verdict"]["columns"]["country"]["new_values"] == {"840": 50}
    # Evidently's Report computes the very same distances as the verdict.
    results = drift.evidently_results(data["evidently"])
    for col, column in verdict.columns.items():
        assert results[col][0] == pytest.approx(column.distance, rel=1e-9)
    assert results[drift.SCORE][0] == pytest.approx(verdict.score_distance, rel=1e-9)


def test_log_monitoring_run(reference: drift.Reference, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    settings = Settings(home=tmp_path, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", drift_min_rows=500)
    verdict, _ = drift.check_drift(reference, survey(600, 23), model_scores(600, 24), settings, "b-42")
    html, json_path = tmp_path / "b-42.html", tmp_path / "b-42.json"
    html.write_text("<html></html>", encoding="utf-8")
    json_path.write_text(json.dumps({"verdict": verdict.to_dict()}), encoding="utf-8")

    run_id = drift.log_monitoring_run(verdict, html, json_path, settings)

    client = MlflowClient(tracking_uri=settings.resolved_tracking_uri)
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == settings.monitoring_experiment
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert {f"drift_{c}" for c in contract.FEATURES} <= set(metrics)
    assert metrics["drift_education"] == pytest.approx(verdict.columns["education"].distance)
    for key in ("drift_share", "score_distance", "contact_rate_reference", "contact_rate_batch"):
        assert metrics[key] == pytest.approx(getattr(verdict, key))
    assert metrics["rows"] == 600
    tags = run.data.tags
    assert tags["batch_id"] == "b-42" and tags["model_version"] == "1"
    assert tags["drifted"] == "false" and tags["too_small"] == "false"
    artifacts = {a.path for a in client.list_artifacts(run_id, "drift")}
    assert artifacts == {"drift/b-42.html", "drift/b-42.json"}
