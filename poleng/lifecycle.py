"""Model lifecycle jobs: prepare the data source, train a challenger, decide promotion, init, reset.

These compose ``synth``/``contract`` (data), ``datasets`` (versioned sets), ``training``,
``registry`` and ``scoring``. The CLI, Mage blocks and the batch loop (``flow``) call them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from poleng import contract, datasets, registry, scoring, synth
from poleng.contract import LABEL
from poleng.registry import Decision, PromotionRule
from poleng.settings import Settings
from poleng.training import TrainResult, evaluate


class LifecycleError(RuntimeError):
    """A lifecycle step that cannot run in the current state; the message says what to do."""


# ---------------------------------------------------------------------------------------------
# The data source and its deterministic splits
# ---------------------------------------------------------------------------------------------
def _source_identity(settings: Settings) -> dict[str, object]:
    return {
        "data": str(settings.data) if settings.data else None,
        "seed": settings.seed,
        "rows": None if settings.data else settings.rows,
        "countries": None if settings.data else settings.countries,
        "later_code": settings.later_country_code,
        "holdout_share": settings.holdout_share,
        "field_chunks": settings.field_chunks,
        "field_label_share": settings.field_label_share,
    }


def load_source_table(settings: Settings) -> pd.DataFrame:
    """The configured source: the real table named by ``POLENG_DATA``, or generated data."""
    if settings.data is not None:
        return contract.load_table(settings.data)
    return synth.generate(
        seed=settings.seed, rows=settings.rows, countries=settings.countries, later_code=settings.later_country_code
    )


def prepare_source(settings: Settings, df: pd.DataFrame | None = None) -> synth.Splits:
    """Load or generate the source table once, split it deterministically, and keep the splits.

    Later calls reuse the stored splits. If the settings now name a different source than the
    one this state directory was built from, stop with a clear message instead of mixing them.
    """
    manifest = settings.source_dir / "manifest.json"
    identity = _source_identity(settings)
    if manifest.exists():
        stored = json.loads(manifest.read_text())
        if stored["identity"] != identity:
            raise LifecycleError(
                f"state in {settings.home} was built from {stored['identity']} but settings now say "
                f"{identity}; run `poleng reset` or choose another POLENG_HOME"
            )
        return synth.load_splits(settings.source_dir)
    df = load_source_table(settings) if df is None else df
    splits = synth.split_source(
        df,
        seed=settings.seed,
        later_code=settings.later_country_code,
        holdout_share=settings.holdout_share,
        field_chunks=settings.field_chunks,
        field_label_share=settings.field_label_share,
    )
    settings.source_dir.mkdir(parents=True, exist_ok=True)
    synth.save_splits(splits, settings.source_dir)
    meta = {"identity": identity, "source_hash": datasets.content_hash(df[contract.TABLE_COLUMNS]), "rows": len(df)}
    datasets.atomic_write_bytes(manifest, json.dumps(meta, indent=1).encode())
    return splits


EvalSets = dict[str, pd.DataFrame]


def evaluation_sets(settings: Settings, field_slice: pd.DataFrame | None = None) -> EvalSets:
    """Promotion evaluation data as named segments: the frozen initial-study holdout, plus the
    newest labelled field slice (``field_slice`` if given, else the current one, if any)."""
    splits = prepare_source(settings)
    sets: EvalSets = {"holdout": splits.holdout[contract.TABLE_COLUMNS].reset_index(drop=True)}
    newest = datasets.current_eval_slice(settings) if field_slice is None else field_slice
    if newest is not None and len(newest):
        sets["field_slice"] = newest[contract.TABLE_COLUMNS].reset_index(drop=True)
    return sets


def evaluation_data(settings: Settings) -> pd.DataFrame:
    """All evaluation segments in one table."""
    return pd.concat(list(evaluation_sets(settings).values()), ignore_index=True)


# ---------------------------------------------------------------------------------------------
# Train a challenger and decide
# ---------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What one training + promotion round did."""

    version: str
    decision: Decision
    result: TrainResult
    champion_before: str | None
    champion_after: str | None
    eval_rows: int


def decide(settings: Settings, version: str, eval_sets: EvalSets | None = None) -> Decision:
    """Re-score the champion and ``version`` on the same evaluation data; apply the promotion rule.

    The rule sees pooled metrics over all segments and the challenger's AUC on each segment.
    """
    eval_sets = evaluation_sets(settings) if eval_sets is None else eval_sets
    pooled = pd.concat(list(eval_sets.values()), ignore_index=True)
    y = pooled[LABEL].to_numpy()
    threshold = settings.decision_threshold
    challenger = scoring.load_version(settings, version)
    p = challenger.score(pooled)
    challenger_metrics = evaluate(y, p, threshold)
    segments, start = {}, 0
    for name, frame in eval_sets.items():
        part = slice(start, start + len(frame))
        segments[name] = evaluate(y[part], p[part], threshold)["roc_auc"]
        start += len(frame)
    champion_version = registry.alias_version(settings, registry.CHAMPION)
    champion_metrics = None
    if champion_version is not None and champion_version != version:
        champion = scoring.load_version(settings, champion_version)
        champion_metrics = evaluate(y, champion.score(pooled), threshold)
    decision = PromotionRule.from_settings(settings).decide(challenger_metrics, champion_metrics, segments)
    registry.apply_decision(
        settings, version, decision, eval_rows=len(pooled), eval_hash=datasets.content_hash(pooled)[:16]
    )
    return decision


def train_and_decide(
    settings: Settings,
    training_set: datasets.TrainingSet,
    *,
    reason: str,
    progress: bool = True,
    eval_sets: EvalSets | None = None,
) -> Outcome:
    """Tune and log a model on a stored training set, register it as challenger, apply the rule.

    ``eval_sets`` defaults to :func:`evaluation_sets` (frozen holdout + newest labelled field slice).
    """
    from poleng import training

    df = datasets.load(training_set.hash, settings)
    result = training.train(df, training_set, settings, reason=reason, progress=progress)
    tags = {
        "training_data_hash": training_set.hash,
        "train_rows": str(training_set.rows),
        "reason": reason,
        "profile": settings.profile,
        **{f"test_{k}": f"{v:.6f}" for k, v in result.metrics.items() if k != "rows"},
    }
    version = registry.register(settings, result.model_uri, result.run_id, tags)
    before = registry.alias_version(settings, registry.CHAMPION)
    eval_sets = evaluation_sets(settings) if eval_sets is None else eval_sets
    decision = decide(settings, version, eval_sets)
    after = registry.alias_version(settings, registry.CHAMPION)
    return Outcome(version, decision, result, before, after, sum(len(f) for f in eval_sets.values()))


def init_project(settings: Settings, *, progress: bool = True) -> Outcome:
    """Prepare the data, train on the initial study and promote the first champion."""
    # Read and validate the source before anything is written: a bad table leaves no trace.
    source = None if (settings.source_dir / "manifest.json").exists() else load_source_table(settings)
    settings.ensure_dirs()
    existing = registry.alias_version(settings, registry.CHAMPION)
    if existing is not None:
        raise LifecycleError(
            f"already initialised: champion is v{existing} of {settings.model_name!r} "
            f"({settings.resolved_tracking_uri}); use `poleng train` or `poleng reset`"
        )
    splits = prepare_source(settings, source)
    ts = datasets.store(splits.train, settings, sources=["initial-study"])
    datasets.set_current(settings, ts)
    return train_and_decide(settings, ts, reason="init", progress=progress)


def retrain_current(settings: Settings, *, progress: bool = True) -> Outcome:
    """Train a new challenger on the newest training set and apply the promotion rule."""
    ts = datasets.current(settings)
    if ts is None:
        raise LifecycleError("no training set yet: run `poleng init` first")
    return train_and_decide(settings, ts, reason="manual", progress=progress)


def later_country_auc(settings: Settings, version: str) -> float:
    """AUC of a model version on the later-country rows no model ever trains on (recovery check)."""
    splits = prepare_source(settings)
    model = scoring.load_version(settings, version)
    y = splits.later_eval[LABEL].to_numpy()
    return evaluate(y, model.score(splits.later_eval), settings.decision_threshold)["roc_auc"]


def reset(settings: Settings, *, keep: tuple[Path, ...] = ()) -> list[Path]:
    """Delete every piece of state this settings object points at; returns what was removed.

    Embedded mode: the whole state directory. With a tracking server: the registered model too.
    ``keep``: entries of the state directory left alone (a running Mage's ``mage_data``, the native
    stack's ``stack`` directory).
    """
    removed: list[Path] = []
    if not settings.is_embedded:
        registry.delete_model(settings)
    if settings.ledger_url:  # a server ledger (an embedded one goes with the state directory)
        from poleng.ledger import Ledger

        with Ledger(settings.ledger_url) as ledger:
            ledger.clear()
    scoring.clear_cache()
    if settings.home.exists():
        for child in sorted(settings.home.iterdir()):
            if child in keep:
                continue
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
            removed.append(child)
    return removed


def summary_metrics(metrics: dict[str, float]) -> str:
    keys = ("roc_auc", "log_loss", "brier", "precision_at_threshold", "recall_at_threshold", "contact_rate")
    return ", ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics and not np.isnan(metrics[k]))
