"""Entry points for schedulers (Mage blocks in ``mage_pipelines/``): settings in, small JSON out.

A Mage block is a thin adapter: it builds ``Settings`` from the pipeline's runtime variables with
``settings_from_runtime``, calls one core function (``flow.process_inbox``, ``scenarios.simulate``,
``lifecycle.retrain_current``/``init_project``/``reset``) and returns one of the summaries below.
Summaries are small dicts of plain values (Mage stores every block output in its data directory),
never data frames.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poleng.settings import Settings

if TYPE_CHECKING:  # heavy modules (pandas, numpy, mlflow): only for the type checker
    from poleng.flow import BatchResult
    from poleng.lifecycle import Outcome
    from poleng.scenarios import SimulationReport

# Runtime variables that map onto Settings fields; every other Mage kwarg is ignored.
RUNTIME_SETTINGS: tuple[str, ...] = ("profile", "seed")


def settings_from_runtime(variables: Mapping[str, Any]) -> Settings:
    """``Settings`` from the environment, overridden by the runtime variables ``profile`` and ``seed``.

    Mage passes runtime variables (and its own kwargs such as ``execution_date``) to a block as
    keyword arguments; empty values (a variable cleared in the UI) keep the environment's value.
    """
    overrides = {k: variables[k] for k in RUNTIME_SETTINGS if variables.get(k) not in (None, "")}
    return Settings(**overrides)


def batch_summary(result: BatchResult) -> dict[str, Any]:
    """The few fields of a ``BatchResult`` worth showing in a scheduler's output."""
    data = result.to_dict()
    keys = ("file_name", "status", "action", "reason", "rows_received", "rows_valid", "rows_rejected",
            "contacts", "drift", "model_version", "error")
    out = {k: data.get(k) for k in keys}
    retrain = data.get("retrain")
    if retrain:
        out["retrain"] = {k: retrain.get(k) for k in ("version", "promoted", "reason") if k in retrain}
    return out


def results_summary(results: Iterable[BatchResult], settings: Settings) -> dict[str, Any]:
    """Counts per status plus one short line per batch (what ``process_inbox`` returned)."""
    batches = [batch_summary(r) for r in results]
    counts: dict[str, int] = {}
    for b in batches:
        counts[str(b["status"])] = counts.get(str(b["status"]), 0) + 1
    return {"home": str(settings.home), "files": len(batches), "counts": counts, "batches": batches}


def scenario_summary(report: SimulationReport, settings: Settings) -> dict[str, Any]:
    """What ``scenarios.simulate`` did, as a small dict."""
    out = results_summary(report.results, settings)
    out.update(
        scenario=report.scenario,
        champion_before=report.champion_before,
        champion_after=report.champion_after,
        later_auc_before=report.later_auc_before,
        later_auc_after=report.later_auc_after,
        seconds=round(float(report.seconds), 1),
    )
    return out


def outcome_summary(outcome: Outcome) -> dict[str, Any]:
    """A ``lifecycle.Outcome`` (train + promotion decision) as a small dict."""
    return {
        "version": outcome.version,
        "champion_before": outcome.champion_before,
        "champion_after": outcome.champion_after,
        "promoted": bool(outcome.decision.promoted),
        "reason": outcome.decision.reason,
        "eval_rows": outcome.eval_rows,
    }


def kept_on_reset(settings: Settings) -> tuple[Path, ...]:
    """State a reset started from a running scheduler must not delete under its own feet.

    ``mage_data`` holds Mage's database (the run that is resetting), ``stack`` the native stack's
    PostgreSQL data, pids and logs.
    """
    return (settings.mage_data, settings.home / "stack")


def reset_summary(removed: Iterable[Path], settings: Settings) -> dict[str, Any]:
    """What ``lifecycle.reset`` removed."""
    names = sorted(p.name for p in removed)
    return {"home": str(settings.home), "removed": names, "kept": [p.name for p in kept_on_reset(settings)]}
