"""The MLflow model registry, behind one module: versions, aliases, the promotion rule, rollback.

One registered model; aliases ``champion``, ``challenger`` and ``previous-champion`` (no stages).
Every promotion decision, promoted or rejected, is written with its numbers as tags on the
challenger's version. Nothing else in the project calls the registry API.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from poleng import tracking
from poleng.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous-champion"
ALIASES = (CHAMPION, CHALLENGER, PREVIOUS)


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (e.g. no champion yet); message is user-facing."""


# ---------------------------------------------------------------------------------------------
# The promotion rule (pure, tested directly)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromotionRule:
    """Promote only if the challenger's pooled AUC clears a floor AND beats the champion's by
    ``min_gain``, its Brier score is not worse than the champion's by more than
    ``brier_tolerance``, and its AUC on *every* evaluation segment (the frozen holdout, the newest
    field slice) clears the floor too. The segment floor catches labelled data that carries no
    learnable signal (e.g. corrupted labels): a better-calibrated challenger can win the pooled
    figures on such data while ranking its own segment no better than chance."""

    min_auc: float
    min_gain: float
    brier_tolerance: float

    @classmethod
    def from_settings(cls, settings: Settings) -> PromotionRule:
        return cls(settings.promotion_min_auc, settings.promotion_min_gain, settings.promotion_brier_tolerance)

    def decide(
        self,
        challenger: dict[str, float],
        champion: dict[str, float] | None,
        segments: dict[str, float] | None = None,
    ) -> Decision:
        """``challenger``/``champion``: pooled metrics; ``segments``: challenger AUC per segment."""
        auc, brier = challenger["roc_auc"], challenger["brier"]
        segments = segments or {}
        failures = []
        if not auc >= self.min_auc:
            failures.append(f"AUC {auc:.4f} below floor {self.min_auc:.4f}")
        for name, seg_auc in segments.items():
            if not seg_auc >= self.min_auc:
                failures.append(f"AUC on {name} {seg_auc:.4f} below floor {self.min_auc:.4f}")
        if champion is None:
            reason = "; ".join(failures) if failures else "first champion"
            return Decision(not failures, reason, auc, brier, None, None, self, segments)
        c_auc, c_brier = champion["roc_auc"], champion["brier"]
        if not auc >= c_auc + self.min_gain:
            failures.append(f"AUC gain {auc - c_auc:+.4f} below required {self.min_gain:+.4f}")
        if not brier <= c_brier + self.brier_tolerance:
            failures.append(f"Brier {brier:.4f} worse than champion {c_brier:.4f} beyond {self.brier_tolerance}")
        if failures:
            return Decision(False, "; ".join(failures), auc, brier, c_auc, c_brier, self, segments)
        reason = f"AUC {auc:.4f} vs {c_auc:.4f} (gain {auc - c_auc:+.4f})"
        return Decision(True, reason, auc, brier, c_auc, c_brier, self, segments)


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    challenger_auc: float
    challenger_brier: float
    champion_auc: float | None
    champion_brier: float | None
    rule: PromotionRule
    segments: dict[str, float] = field(default_factory=dict)  # challenger AUC per evaluation segment

    def tags(self, *, eval_rows: int, eval_hash: str, champion_version: str | None) -> dict[str, str]:
        def fmt(v: float | None) -> str:
            return "none" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6f}"

        return {
            "decision": "promoted" if self.promoted else "rejected",
            "decision_reason": self.reason,
            "decision_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "decision_challenger_auc": fmt(self.challenger_auc),
            "decision_challenger_brier": fmt(self.challenger_brier),
            "decision_champion_auc": fmt(self.champion_auc),
            "decision_champion_brier": fmt(self.champion_brier),
            "decision_champion_version": champion_version or "none",
            "decision_eval_rows": str(eval_rows),
            "decision_eval_hash": eval_hash,
            "rule_min_auc": str(self.rule.min_auc),
            "rule_min_gain": str(self.rule.min_gain),
            "rule_brier_tolerance": str(self.rule.brier_tolerance),
            **{f"decision_challenger_auc_{name}": fmt(v) for name, v in self.segments.items()},
        }


# ---------------------------------------------------------------------------------------------
# Registry access
# ---------------------------------------------------------------------------------------------
def client(settings: Settings) -> MlflowClient:
    tracking.configure(settings)  # first: it also silences MLflow's import-time warnings
    from mlflow import MlflowClient

    uri = settings.resolved_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def model_uri(settings: Settings, alias: str = CHAMPION) -> str:
    return f"models:/{settings.model_name}@{alias}"


def register(settings: Settings, source_uri: str, run_id: str, tags: dict[str, str]) -> str:
    """Register a logged model as a new version, tag it, and point ``challenger`` at it."""
    from mlflow.exceptions import MlflowException

    c = client(settings)
    try:
        c.get_registered_model(settings.model_name)
    except MlflowException:
        c.create_registered_model(
            settings.model_name, description="P(politically disengaged) from survey answers; see docs/."
        )
    # MLflow 3 logged models: a tracking server accepts a `models:/m-<id>` source only with its model_id.
    model_id = source_uri.removeprefix("models:/") if source_uri.startswith("models:/m-") else None
    mv = c.create_model_version(settings.model_name, source_uri, run_id=run_id, tags=tags, model_id=model_id)
    c.set_registered_model_alias(settings.model_name, CHALLENGER, mv.version)
    return str(mv.version)


def alias_version(settings: Settings, alias: str) -> str | None:
    """The version an alias points at, or None (also when the model is not registered yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client(settings).get_model_version_by_alias(settings.model_name, alias).version)
    except MlflowException as exc:
        # "No such model / alias" is an answer; a server that cannot be reached is not.
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def version_tags(settings: Settings, version: str) -> dict[str, str]:
    return dict(client(settings).get_model_version(settings.model_name, version).tags)


def tag_version(settings: Settings, version: str, tags: dict[str, str]) -> None:
    c = client(settings)
    for k, v in tags.items():
        c.set_model_version_tag(settings.model_name, version, k, v)


def apply_decision(settings: Settings, version: str, decision: Decision, *, eval_rows: int, eval_hash: str) -> None:
    """Record the decision on the challenger's version; on promotion move the aliases."""
    c = client(settings)
    name = settings.model_name
    current = alias_version(settings, CHAMPION)
    tag_version(settings, version, decision.tags(eval_rows=eval_rows, eval_hash=eval_hash,
                                                 champion_version=current))
    if decision.promoted:
        if current is not None and current != version:
            c.set_registered_model_alias(name, PREVIOUS, current)
        c.set_registered_model_alias(name, CHAMPION, version)


def rollback(settings: Settings) -> tuple[str, str]:
    """Move ``champion`` back to ``previous-champion``; returns (demoted, restored) versions."""
    c = client(settings)
    current = alias_version(settings, CHAMPION)
    previous = alias_version(settings, PREVIOUS)
    if current is None:
        raise RegistryError("there is no champion to roll back (run `poleng init` first)")
    if previous is None:
        raise RegistryError(f"champion is v{current} and there is no previous champion to roll back to")
    c.set_registered_model_alias(settings.model_name, CHAMPION, previous)
    c.delete_registered_model_alias(settings.model_name, PREVIOUS)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    tag_version(settings, current, {"rolled_back_at": now, "rolled_back_to": previous})
    return current, previous


@dataclass
class VersionInfo:
    version: str
    aliases: list[str]
    run_id: str
    created: datetime
    tags: dict[str, str]
    metrics: dict[str, float]


def list_versions(settings: Settings) -> list[VersionInfo]:
    """All versions, newest first, with aliases, their run's test metrics and decision tags."""
    from mlflow.exceptions import MlflowException

    c = client(settings)
    try:
        rm = c.get_registered_model(settings.model_name)
    except MlflowException:
        return []
    by_version: dict[str, list[str]] = {}
    for alias, v in (rm.aliases or {}).items():
        by_version.setdefault(str(v), []).append(alias)
    out = []
    for mv in c.search_model_versions(f"name='{settings.model_name}'"):
        metrics: dict[str, Any] = {}
        if mv.run_id:
            try:
                metrics = dict(c.get_run(mv.run_id).data.metrics)
            except MlflowException:
                metrics = {}
        out.append(
            VersionInfo(
                version=str(mv.version),
                aliases=sorted(by_version.get(str(mv.version), [])),
                run_id=mv.run_id or "",
                created=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC),
                tags=dict(mv.tags),
                metrics=metrics,
            )
        )
    return sorted(out, key=lambda v: int(v.version), reverse=True)


def delete_model(settings: Settings) -> bool:
    """Delete the registered model (all versions). Used by ``reset`` against a tracking server."""
    from mlflow.exceptions import MlflowException

    try:
        client(settings).delete_registered_model(settings.model_name)
        return True
    except MlflowException:
        return False
