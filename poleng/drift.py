"""Drift monitor: compare a scoring batch with the champion's training data, before it is scored.

This is the only module of poleng that imports Evidently (0.7). Evidently costs ~6 s to import,
so it is imported inside the functions that need it, never at module level.

Reference (one per champion version, cached on disk by :func:`load_or_build_reference`)
    The champion's training features with the champion's scores (``score`` column), sampled
    deterministically (``settings.seed``) to at most ``settings.drift_reference_rows`` rows; the
    champion's feature importances (gain); the reference contact rate (share of training scores
    ``>= settings.decision_threshold``, on *all* training rows); and per-column value sets (the
    codes seen in *all* training rows) for new-value detection.

Rules of :func:`check_drift` (Evidently's own stat tests, per column):

* **Column drift.** Tests are fixed by column type, not by Evidently's size-dependent defaults:
  Jensen-Shannon distance (natural log, 0..0.83) for string-code columns (``contract.CATEGORICAL``)
  against ``settings.drift_cat_threshold``; Wasserstein distance normed by the reference standard
  deviation for integer columns (``contract.NUMERICAL``) against ``settings.drift_num_threshold``.
  A column drifts when ``distance >= threshold`` (Evidently's rule) **or** when the batch holds
  *new values*: codes valid under the contract but never seen in the reference column (e.g. a new
  country). New values are reported per column with their row counts; a single row is enough.
* **Dataset drift.** ``drift_share = drifted columns / 32 >= settings.drift_share`` **or** any of the
  champion's ``settings.drift_top_k`` most important features drifted (importances are summed per
  contract feature if the model reports encoded names such as ``country_840``; features with zero
  gain are never top-k).
* **Prediction drift.** Plain (un-normed) Wasserstein distance between the reference scores and
  the batch scores, ``>= settings.drift_score_threshold``. Scores live on the fixed scale [0, 1],
  so the plain distance reads as "the scores moved by this much on average" and does not depend
  on how spread out the champion's training scores happen to be (a normed distance would).
* **Contact-rate move.** ``|batch contact rate - reference contact rate| >
  settings.drift_contact_rate_tolerance``; contact rate = share of scores ``>= decision_threshold``.
* **Verdict.** ``drifted = dataset_drift or prediction_drift or contact_rate_moved``. Batches with
  fewer than ``settings.drift_min_rows`` rows are checked all the same but flagged ``too_small``,
  and ``actionable = drifted and not too_small``: only actionable drift should trigger retraining.

Evidently and performance: the distances come from Evidently's registered stat tests, called
exactly as Evidently 0.7's ``ValueDrift`` metric calls them. The Evidently ``Report`` of the same
per-column ``ValueDrift`` metrics (the HTML report) is run lazily, by :func:`write_reports`:
``ValueDrift`` builds each column's Plotly widget inside its calculation, which is ~3/4 of a
Report's run time and is not needed for the verdict. ``DataDriftPreset`` is not used: its
``DriftedColumnsCount`` recomputes every column a second time through the legacy
``DatasetDriftMetric`` (~2.5x slower), and its drift-share rule is ours anyway. String-code
columns are handed to Evidently as pandas ``category`` dtype (same distances, faster counts).
:func:`write_reports` checks that the Report's distances equal the verdict's.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from poleng import contract

if TYPE_CHECKING:
    from poleng.settings import Settings

log = logging.getLogger(__name__)

SCORE = "score"
CAT_METHOD = "jensenshannon"
NUM_METHOD = "wasserstein"
# Our own Evidently stat test (registered on first use): plain Wasserstein distance on scores.
SCORE_METHOD = "poleng_score_wasserstein"
REFERENCE_FORMAT = 1

ColumnKind = Literal["categorical", "numerical"]
BuildReference = Callable[[], tuple[pd.DataFrame, np.ndarray, dict[str, float]]]


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
@dataclass
class ColumnDrift:
    """Drift of one feature column between the reference and a batch."""

    column: str
    kind: ColumnKind
    method: str
    distance: float
    threshold: float
    drifted: bool  # distance >= threshold, or new values present
    new_values: dict[str, int] = field(default_factory=dict)  # code -> rows in the batch

    @property
    def ratio(self) -> float:
        """Distance relative to its threshold (>= 1 means the distance alone drifts)."""
        return self.distance / self.threshold if self.threshold > 0 else math.inf


@dataclass
class DriftVerdict:
    """Everything the drift check decided about one batch. See the module docstring for the rules."""

    batch_id: str
    model_version: str
    rows: int
    too_small: bool
    columns: dict[str, ColumnDrift]
    drifted_columns: list[str]  # sorted by distance/threshold, descending
    drift_share: float
    top_k_drifted: list[str]  # drifted columns among the champion's top-k features, by importance
    dataset_drift: bool
    score_distance: float
    prediction_drift: bool
    contact_rate_reference: float
    contact_rate_batch: float
    contact_rate_moved: bool
    drifted: bool
    actionable: bool
    reasons: list[str]
    top_k_features: list[str] = field(default_factory=list)
    checked_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``DriftVerdict.from_dict`` reverses it)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftVerdict:
        """Rebuild a verdict from :meth:`to_dict` output (unknown keys are ignored)."""
        names = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in names}
        values["columns"] = {name: ColumnDrift(**col) for name, col in data["columns"].items()}
        return cls(**values)

    def summary(self) -> str:
        """One short line, e.g. ``drift: country(new 3 values), education; scores +0.12``."""
        details: list[str] = []
        names = []
        for name in self.drifted_columns[:6]:
            new = self.columns[name].new_values
            names.append(f"{name}(new {len(new)} value{'s' if len(new) != 1 else ''})" if new else name)
        if len(self.drifted_columns) > 6:
            names.append(f"+{len(self.drifted_columns) - 6} more")
        if names:
            details.append(", ".join(names))
        if self.prediction_drift:
            details.append(f"scores {self.score_distance:.3f}")
        if self.contact_rate_moved:
            details.append(f"contact rate {self.contact_rate_reference:.2f}->{self.contact_rate_batch:.2f}")
        if self.drifted:
            line = "drift: " + "; ".join(details)
        else:
            line = "no drift" + (f" (columns: {'; '.join(details)})" if details else "")
        if self.too_small:
            line += f" [too small: {self.rows} rows]"
        return line


# --------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------
@dataclass
class Reference:
    """The champion's reference: sampled training features + scores, importances, contact rate."""

    frame: pd.DataFrame  # contract FEATURES + SCORE, at most settings.drift_reference_rows rows
    importances: dict[str, float]  # as the model reported them (feature or encoded name -> gain)
    contact_rate: float  # on all training rows
    version: str
    value_sets: dict[str, frozenset[str]]  # column -> codes (as strings) seen in all training rows
    source_rows: int = 0  # training rows before sampling
    _prepared: pd.DataFrame | None = field(default=None, init=False, repr=False, compare=False)

    def feature_importances(self) -> dict[str, float]:
        """Importances summed per contract feature (encoded names like ``country_840`` included)."""
        return aggregate_importances(self.importances)

    def top_features(self, k: int) -> list[str]:
        """The ``k`` most important contract features (positive gain only), most important first."""
        imp = self.feature_importances()
        ranked = sorted(
            (f for f in contract.FEATURES if imp.get(f, 0.0) > 0),
            key=lambda f: (-imp[f], contract.FEATURES.index(f)),
        )
        return ranked[: max(k, 0)]

    def prepared(self) -> pd.DataFrame:
        """The frame as handed to Evidently (string codes as ``category``), built once."""
        if self._prepared is None:
            self._prepared = _prepare(self.frame, self.frame[SCORE].to_numpy())
        return self._prepared


def aggregate_importances(importances: dict[str, float]) -> dict[str, float]:
    """Map importance keys to contract features and sum them; unknown keys are dropped.

    A key matches a feature exactly, or as ``<feature><sep><anything>`` with ``sep`` one of
    ``_ = : . [`` (one-hot or category-encoded names); the longest matching feature wins, so
    ``immigrant_mother_2`` belongs to ``immigrant_mother``, not ``immigrant``.
    """
    by_length = sorted(contract.FEATURES, key=len, reverse=True)
    out: dict[str, float] = {}
    for key, value in importances.items():
        feature = key if key in contract.FEATURES else None
        if feature is None:
            feature = next(
                (f for f in by_length if key.startswith(f) and len(key) > len(f) and key[len(f)] in "_=:.["),
                None,
            )
        if feature is not None and value is not None and math.isfinite(float(value)):
            out[feature] = out.get(feature, 0.0) + float(value)
    return out


def build_reference(
    features: pd.DataFrame,
    scores: np.ndarray,
    importances: dict[str, float],
    settings: Settings,
    model_version: str,
) -> Reference:
    """Make a :class:`Reference` from the champion's training features, scores and importances.

    Contact rate and value sets come from all rows; the frame is a deterministic sample
    (``settings.seed``) of at most ``settings.drift_reference_rows`` rows.
    """
    scores = np.asarray(scores, dtype="float64").ravel()
    if len(features) != len(scores):
        raise ValueError(f"reference: {len(features)} feature rows but {len(scores)} scores")
    if len(features) == 0:
        raise ValueError("reference: the champion's training data is empty")
    missing = [c for c in contract.FEATURES if c not in features.columns]
    if missing:
        raise ValueError(f"reference: missing feature columns {missing}")
    frame = _canonical(features)
    frame[SCORE] = scores
    value_sets = {c: frozenset(_codes(frame[c]).unique().tolist()) for c in contract.FEATURES}
    contact_rate = float(np.mean(scores >= settings.decision_threshold))
    if len(frame) > settings.drift_reference_rows:
        frame = frame.sample(n=settings.drift_reference_rows, random_state=settings.seed)
    return Reference(
        frame=frame.reset_index(drop=True),
        importances={str(k): float(v) for k, v in importances.items()},
        contact_rate=contact_rate,
        version=str(model_version),
        value_sets=value_sets,
        source_rows=len(scores),
    )


def _reference_paths(settings: Settings, model_version: str) -> tuple[Path, Path]:
    stem = f"reference-v{_safe_name(str(model_version))}"
    return settings.cache / f"{stem}.parquet", settings.cache / f"{stem}.json"


def load_or_build_reference(settings: Settings, model_version: str, build: BuildReference) -> Reference:
    """The champion's reference, from ``settings.cache`` if there, else built once and cached.

    ``build()`` returns ``(features, scores, importances)`` for the champion's training data. The
    cache is ``cache/reference-v{version}.parquet`` plus ``.json`` meta (written last, atomically);
    it is rebuilt if its seed, sample size or decision threshold differ from ``settings``.
    """
    parquet, meta_path = _reference_paths(settings, model_version)
    if parquet.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if _meta_matches(meta, settings):
                frame = pd.read_parquet(parquet)
                return Reference(
                    frame=_canonical(frame, keep=[SCORE]),
                    importances={str(k): float(v) for k, v in meta["importances"].items()},
                    contact_rate=float(meta["contact_rate"]),
                    version=str(meta["version"]),
                    value_sets={c: frozenset(v) for c, v in meta["value_sets"].items()},
                    source_rows=int(meta.get("source_rows", len(frame))),
                )
            log.info("reference cache for v%s was made with other settings: rebuilding", model_version)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("reference cache for v%s unreadable (%s): rebuilding", model_version, exc)
    features, scores, importances = build()
    reference = build_reference(features, scores, importances, settings, model_version)
    settings.cache.mkdir(parents=True, exist_ok=True)
    _atomic_write(parquet, lambda p: reference.frame.to_parquet(p, index=False))
    meta = {
        "format": REFERENCE_FORMAT,
        "version": reference.version,
        "rows": len(reference.frame),
        "source_rows": reference.source_rows,
        "seed": settings.seed,
        "reference_rows": settings.drift_reference_rows,
        "decision_threshold": settings.decision_threshold,
        "contact_rate": reference.contact_rate,
        "importances": reference.importances,
        "value_sets": {c: sorted(v, key=_code_key) for c, v in reference.value_sets.items()},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _atomic_write(meta_path, lambda p: p.write_text(json.dumps(meta, indent=1), encoding="utf-8"))
    log.info(
        "reference for v%s built: %d of %d rows cached", model_version, len(reference.frame), len(scores)
    )
    return reference


def _meta_matches(meta: dict[str, Any], settings: Settings) -> bool:
    return (
        meta.get("format") == REFERENCE_FORMAT
        and meta.get("seed") == settings.seed
        and meta.get("reference_rows") == settings.drift_reference_rows
        and meta.get("decision_threshold") == settings.decision_threshold
    )


# --------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Spec:
    """One per-column drift test: the same spec feeds the fast check and Evidently's Report."""

    column: str
    kind: ColumnKind
    method: str
    threshold: float


def _specs(settings: Settings) -> list[_Spec]:
    specs = [_Spec(c, "categorical", CAT_METHOD, settings.drift_cat_threshold) for c in contract.CATEGORICAL]
    specs += [_Spec(c, "numerical", NUM_METHOD, settings.drift_num_threshold) for c in contract.NUMERICAL]
    specs.append(_Spec(SCORE, "numerical", SCORE_METHOD, settings.drift_score_threshold))
    return specs


class DriftEvidence:
    """The inputs of one drift check; renders Evidently's ``Report`` on first :meth:`snapshot` call.

    Evidently 0.7's ``ValueDrift`` builds each column's Plotly widget inside its calculation,
    which is ~3/4 of a Report's run time; the verdict does not need it, so it is paid only
    when a report is written.
    """

    def __init__(
        self,
        batch_id: str,
        model_version: str,
        reference: pd.DataFrame,
        current: pd.DataFrame,
        specs: list[_Spec],
    ) -> None:
        self.batch_id = batch_id
        self.model_version = model_version
        self.reference = reference
        self.current = current
        self.specs = specs
        self._snapshot: Any = None

    def snapshot(self) -> Any:
        """Evidently ``Snapshot`` of per-column ``ValueDrift`` metrics (and tests), computed once."""
        if self._snapshot is None:
            from evidently import DataDefinition, Dataset, Report
            from evidently.metrics import ValueDrift

            _register_score_stattest()
            metrics = [
                ValueDrift(column=s.column, method=s.method, threshold=s.threshold) for s in self.specs
            ]
            definition = DataDefinition(
                categorical_columns=[s.column for s in self.specs if s.kind == "categorical"],
                numerical_columns=[s.column for s in self.specs if s.kind == "numerical"],
            )
            report = Report(
                metrics,
                include_tests=True,
                metadata={"batch_id": self.batch_id, "model_version": self.model_version},
            )
            self._snapshot = report.run(
                Dataset.from_pandas(self.current, data_definition=definition),
                Dataset.from_pandas(self.reference, data_definition=definition),
            )
        return self._snapshot


def check_drift(
    reference: Reference,
    batch: pd.DataFrame,
    scores: np.ndarray,
    settings: Settings,
    batch_id: str,
) -> tuple[DriftVerdict, DriftEvidence]:
    """Compare ``batch`` (contract features; extra columns ignored) and its ``scores`` with the reference.

    Distances come from Evidently's own registered stat tests (``jensenshannon``, ``wasserstein``
    and our plain score Wasserstein), applied exactly as Evidently's ``ValueDrift`` applies them.
    Returns the verdict and a :class:`DriftEvidence` whose ``snapshot()`` runs the matching
    Evidently ``Report`` (used by :func:`write_reports`, which checks that both agree).
    Raises ``ValueError`` if the batch is empty, lacks feature columns, or scores do not match it.
    """
    scores = np.asarray(scores, dtype="float64").ravel()
    missing = [c for c in contract.FEATURES if c not in batch.columns]
    if missing:
        raise ValueError(f"batch {batch_id}: missing feature columns {missing}")
    if len(batch) == 0:
        raise ValueError(f"batch {batch_id}: no rows to check")
    if len(scores) != len(batch):
        raise ValueError(f"batch {batch_id}: {len(batch)} rows but {len(scores)} scores")

    current = _prepare(_canonical(batch), scores)
    specs = _specs(settings)
    results = _stat_tests(reference.prepared(), current, specs)

    columns: dict[str, ColumnDrift] = {}
    for spec in specs:
        if spec.column == SCORE:
            continue
        distance, threshold, detected = results[spec.column]
        new_values = _new_values(
            current[spec.column], spec.column, reference.value_sets.get(spec.column, frozenset())
        )
        columns[spec.column] = ColumnDrift(
            column=spec.column,
            kind=spec.kind,
            method=spec.method,
            distance=distance,
            threshold=threshold,
            drifted=bool(detected or new_values),
            new_values=new_values,
        )
    columns = {c: columns[c] for c in contract.FEATURES}
    score_distance, _, prediction_drift = results[SCORE]
    verdict = _decide(reference, columns, scores, score_distance, prediction_drift, settings, batch_id)
    return verdict, DriftEvidence(batch_id, reference.version, reference.prepared(), current, specs)


def _stat_tests(
    reference: pd.DataFrame, current: pd.DataFrame, specs: list[_Spec]
) -> dict[str, tuple[float, float, bool]]:
    """Column -> (distance, threshold, drifted) by Evidently's stat tests, cleaned as ``ValueDrift``."""
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    _register_score_stattest()
    out: dict[str, tuple[float, float, bool]] = {}
    for spec in specs:
        column_type = ColumnType.Categorical if spec.kind == "categorical" else ColumnType.Numerical
        ref, cur = reference[spec.column], current[spec.column]
        if column_type == ColumnType.Numerical:
            ref = ref.replace([-np.inf, np.inf], np.nan)
            cur = cur.replace([-np.inf, np.inf], np.nan)
        ref, cur = ref.dropna(), cur.dropna()
        if ref.empty or cur.empty:
            raise ValueError(f"column {spec.column!r} has no values to compare")
        test = get_stattest(ref, cur, column_type, spec.method)
        result = test(ref, cur, column_type, spec.threshold)
        out[spec.column] = (float(result.drift_score), float(result.actual_threshold), bool(result.drifted))
    return out


def _decide(
    reference: Reference,
    columns: dict[str, ColumnDrift],
    scores: np.ndarray,
    score_distance: float,
    prediction_drift: bool,
    settings: Settings,
    batch_id: str,
) -> DriftVerdict:
    """Apply the verdict rules of the module docstring to the per-column results."""
    rows = len(scores)
    drifted_columns = sorted((c for c, d in columns.items() if d.drifted), key=lambda c: -columns[c].ratio)
    share = len(drifted_columns) / len(columns)
    top_k = reference.top_features(settings.drift_top_k)
    top_k_drifted = [c for c in top_k if columns[c].drifted]
    dataset_drift = share >= settings.drift_share or bool(top_k_drifted)
    contact_rate_batch = float(np.mean(scores >= settings.decision_threshold))
    contact_rate_moved = (
        abs(contact_rate_batch - reference.contact_rate) > settings.drift_contact_rate_tolerance
    )
    too_small = rows < settings.drift_min_rows
    drifted = dataset_drift or prediction_drift or contact_rate_moved

    reasons: list[str] = []
    if share >= settings.drift_share:
        reasons.append(
            f"{len(drifted_columns)} of {len(columns)} columns drifted "
            f"(share {share:.2f} >= {settings.drift_share})"
        )
    if top_k_drifted:
        reasons.append(f"top-{settings.drift_top_k} feature(s) drifted: {', '.join(top_k_drifted)}")
    for col in drifted_columns:
        if columns[col].new_values:
            new = columns[col].new_values
            shown = sorted(new, key=_code_key)[:10]
            reasons.append(f"{col}: {len(new)} new value(s) {shown} in {sum(new.values())} rows")
    if prediction_drift:
        reasons.append(f"score distance {score_distance:.3f} >= {settings.drift_score_threshold}")
    if contact_rate_moved:
        reasons.append(
            f"contact rate moved {reference.contact_rate:.3f} -> {contact_rate_batch:.3f} "
            f"(more than {settings.drift_contact_rate_tolerance})"
        )
    if too_small:
        reasons.append(f"too small: {rows} rows < {settings.drift_min_rows}; not actionable")

    return DriftVerdict(
        batch_id=batch_id,
        model_version=reference.version,
        rows=rows,
        too_small=too_small,
        columns=columns,
        drifted_columns=drifted_columns,
        drift_share=share,
        top_k_drifted=top_k_drifted,
        dataset_drift=dataset_drift,
        score_distance=score_distance,
        prediction_drift=prediction_drift,
        contact_rate_reference=reference.contact_rate,
        contact_rate_batch=contact_rate_batch,
        contact_rate_moved=contact_rate_moved,
        drifted=drifted,
        actionable=drifted and not too_small,
        reasons=reasons,
        top_k_features=top_k,
        checked_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def evidently_results(result: dict[str, Any]) -> dict[str, tuple[float, float, bool]]:
    """Column -> (distance, threshold, drift detected) from ``Snapshot.dict()`` of ``ValueDrift`` metrics."""
    out: dict[str, tuple[float, float, bool]] = {}
    failed: dict[str, bool] = {}
    for test in result.get("tests", []):
        params = test.get("metric_config", {}).get("params", {})
        if "column" in params:
            failed[params["column"]] = test.get("status") == "FAIL"
    for metric in result["metrics"]:
        config = metric.get("config", {})
        if config.get("type") != "evidently:metric_v2:ValueDrift":
            continue
        col = config["column"]
        distance = float(metric["value"])
        threshold = float(config["threshold"])
        out[col] = (distance, threshold, failed.get(col, distance >= threshold))
    missing = [c for c in [*contract.FEATURES, SCORE] if c not in out]
    if missing:
        raise RuntimeError(f"Evidently returned no drift result for {missing}")
    return out


_registered = False


def _register_score_stattest() -> None:
    """Register the plain Wasserstein distance for scores with Evidently (once per process)."""
    global _registered
    if _registered:
        return
    from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest
    from evidently.legacy.core import ColumnType
    from scipy import stats

    def score_wasserstein(
        reference_data: pd.Series, current_data: pd.Series, feature_type: Any, threshold: float
    ) -> tuple[float, bool]:
        value = float(stats.wasserstein_distance(reference_data, current_data))
        return value, value >= threshold

    register_stattest(
        StatTest(
            name=SCORE_METHOD,
            display_name="Wasserstein distance (plain, scores in [0, 1])",
            allowed_feature_types=[ColumnType.Numerical],
            default_threshold=0.1,
        ),
        score_wasserstein,
    )
    _registered = True


# --------------------------------------------------------------------------------------------
# Reports and MLflow
# --------------------------------------------------------------------------------------------
def write_reports(
    verdict: DriftVerdict, snapshot: DriftEvidence | Any, settings: Settings, batch_id: str
) -> tuple[Path, Path]:
    """Write ``reports/<batch_id>.html`` (Evidently's report) and ``reports/<batch_id>.json``.

    ``snapshot`` is the :class:`DriftEvidence` from :func:`check_drift` (rendered here, ~3/4 of
    the Evidently cost) or an Evidently ``Snapshot``. The JSON is ``{"verdict":
    verdict.to_dict(), "evidently": snapshot.dict()}``; ``DriftVerdict.from_dict(data["verdict"])``
    gives the verdict back. A warning is logged if Evidently's distances differ from the verdict's.
    """
    snap = snapshot.snapshot() if isinstance(snapshot, DriftEvidence) else snapshot
    evidently_dict = json.loads(snap.json())
    _warn_if_inconsistent(verdict, evidently_dict)
    settings.reports.mkdir(parents=True, exist_ok=True)
    stem = _safe_name(batch_id)
    html = settings.reports / f"{stem}.html"
    json_path = settings.reports / f"{stem}.json"
    _atomic_write(html, lambda p: snap.save_html(str(p)))
    payload = {"verdict": verdict.to_dict(), "evidently": evidently_dict}
    _atomic_write(
        json_path, lambda p: p.write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
    )
    return html, json_path


def _warn_if_inconsistent(verdict: DriftVerdict, evidently_dict: dict[str, Any]) -> None:
    try:
        results = evidently_results(evidently_dict)
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        log.warning("batch %s: cannot read Evidently's results (%s)", verdict.batch_id, exc)
        return
    ours = {c: d.distance for c, d in verdict.columns.items()} | {SCORE: verdict.score_distance}
    off = [c for c, v in ours.items() if not math.isclose(v, results[c][0], rel_tol=1e-9, abs_tol=1e-12)]
    if off:
        log.warning("batch %s: Evidently's report disagrees with the verdict on %s", verdict.batch_id, off)


def log_monitoring_run(verdict: DriftVerdict, html: Path, json_path: Path, settings: Settings) -> str:
    """Log one MLflow run in ``settings.monitoring_experiment``; return its run id.

    Metrics: ``drift_<column>`` (distance) per feature, ``drift_share``, ``drifted_columns``,
    ``score_distance``, ``contact_rate_reference``, ``contact_rate_batch``, ``rows``.
    Tags: ``batch_id``, ``model_version``, ``drifted``, ``actionable``, ``too_small`` and the
    rule flags. Artifacts: the HTML and JSON reports under ``drift/``. Uses an explicit
    ``MlflowClient`` on ``settings.resolved_tracking_uri``, so any active run of the caller is
    left alone. If the experiment does not exist yet it is created (artifacts under
    ``settings.mlartifacts`` when MLflow runs embedded on SQLite).
    """
    from poleng.tracking import quiet_mlflow

    quiet_mlflow()
    from mlflow.entities import Metric, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if settings.is_embedded:
        settings.home.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=settings.resolved_tracking_uri)
    experiment = client.get_experiment_by_name(settings.monitoring_experiment)
    if experiment is None:
        location = settings.mlartifacts.as_uri() if settings.is_embedded else None
        try:
            experiment_id = client.create_experiment(
                settings.monitoring_experiment, artifact_location=location
            )
        except MlflowException:  # created concurrently
            experiment = client.get_experiment_by_name(settings.monitoring_experiment)
            if experiment is None:
                raise
            experiment_id = experiment.experiment_id
    else:
        experiment_id = experiment.experiment_id

    tags = {
        "batch_id": verdict.batch_id,
        "model_version": verdict.model_version,
        "drifted": str(verdict.drifted).lower(),
        "actionable": str(verdict.actionable).lower(),
        "too_small": str(verdict.too_small).lower(),
        "dataset_drift": str(verdict.dataset_drift).lower(),
        "prediction_drift": str(verdict.prediction_drift).lower(),
        "contact_rate_moved": str(verdict.contact_rate_moved).lower(),
        "drifted_columns": ",".join(verdict.drifted_columns)[:5000],
        "summary": verdict.summary()[:5000],
    }
    run = client.create_run(experiment_id, run_name=f"drift-{verdict.batch_id}", tags=tags)
    run_id = run.info.run_id
    try:
        now = int(datetime.now(UTC).timestamp() * 1000)
        values = {f"drift_{c}": d.distance for c, d in verdict.columns.items()}
        values |= {
            "drift_share": verdict.drift_share,
            "drifted_columns": float(len(verdict.drifted_columns)),
            "score_distance": verdict.score_distance,
            "contact_rate_reference": verdict.contact_rate_reference,
            "contact_rate_batch": verdict.contact_rate_batch,
            "rows": float(verdict.rows),
        }
        metrics = [Metric(k, float(v), now, 0) for k, v in values.items()]
        client.log_batch(run_id, metrics=metrics, tags=[RunTag("mlflow.source.name", "poleng.drift")])
        client.log_artifact(run_id, str(html), artifact_path="drift")
        client.log_artifact(run_id, str(json_path), artifact_path="drift")
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def _canonical(df: pd.DataFrame, keep: list[str] | None = None) -> pd.DataFrame:
    """Contract features in contract order (+ ``keep``): string codes as object str, integers as int64."""
    out = pd.DataFrame(index=df.index)
    for col in contract.FEATURES:
        s = df[col]
        if col in contract.CATEGORICAL:
            out[col] = s.astype(str).astype(object)
        else:
            out[col] = s.astype("int64")
    for col in keep or []:
        out[col] = df[col]
    return out


def _prepare(frame: pd.DataFrame, scores: np.ndarray) -> pd.DataFrame:
    """Frame for Evidently: string codes as pandas ``category`` (same distances, faster), plus scores."""
    out = frame[contract.FEATURES].copy()
    for col in contract.CATEGORICAL:
        out[col] = out[col].astype("category")
    out[SCORE] = np.asarray(scores, dtype="float64")
    return out.reset_index(drop=True)


def _codes(s: pd.Series) -> pd.Series:
    return s.astype(str)


def _new_values(current: pd.Series, column: str, seen: frozenset[str]) -> dict[str, int]:
    """Contract-valid codes of ``current`` never seen in the reference, with their row counts."""
    counts = current.value_counts(sort=False)
    counts = counts[counts > 0]
    new = {str(v): int(n) for v, n in counts.items() if str(v) not in seen}
    if not new:
        return {}
    valid = _valid_codes(column, list(new))
    return {v: new[v] for v in sorted(new, key=_code_key) if v in valid}


def _valid_codes(column: str, values: list[str]) -> set[str]:
    if column == contract.COUNTRY:
        mask = contract.valid_country(pd.Series(values, dtype=object))
        return {v for v, ok in zip(values, mask, strict=True) if ok}
    if column in contract.STRING_CODES:
        return set(values) & contract.allowed_string_codes(column)
    lo, hi = contract.INTEGER_CODES[column]
    return {v for v in values if v.lstrip("-").isdigit() and lo <= int(v) <= hi}


def _code_key(code: str) -> tuple[int, int | str]:
    return (0, int(code)) if code.isdigit() else (1, code)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe_name(name: str) -> str:
    """A file-name-safe form of an id (anything else becomes ``_``)."""
    return _UNSAFE.sub("_", name).strip("._") or "_"


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary file in the same directory, then rename over ``path``.

    The temporary name is unique per call, and the file is created by ``write`` itself, so it
    gets the usual permissions (``mkstemp`` would make it owner-only).
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
