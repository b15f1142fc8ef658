"""Hyperopt-tuned XGBoost: search, refit, evaluation, and everything logged to MLflow.

One tuning run per training: each Hyperopt trial is a nested child run (params, val AUC, log loss,
best iteration). The parent run then refits the winner with its best iteration count and logs the
final metrics on a test split that tuning never saw, plots, the pyfunc model with signature and
input example, the training-data hash (as an MLflow dataset input) and the git commit.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from poleng import tracking
from poleng.contract import FEATURES, LABEL
from poleng.datasets import TrainingSet
from poleng.features import fit_spec, transform
from poleng.model import BOOSTER_FILE, SPEC_FILE, EngagementModel
from poleng.settings import Settings

TEST_SHARE = 0.15


@dataclass
class TrainResult:
    run_id: str
    model_uri: str
    metrics: dict[str, float]
    params: dict[str, Any]
    best_iteration: int
    training_set: TrainingSet
    model: EngagementModel
    trials: int
    seconds: float
    trial_seconds: list[float] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Pure pieces (tested directly)
# ---------------------------------------------------------------------------------------------
def search_space() -> dict[str, Any]:
    """The Hyperopt TPE space: log scales for rates and regularisation, integer depth."""
    from hyperopt import hp
    from hyperopt.pyll import scope

    return {
        "learning_rate": hp.loguniform("learning_rate", math.log(0.02), math.log(0.3)),
        "max_depth": scope.int(hp.quniform("max_depth", 2, 8, 1)),
        "min_child_weight": hp.loguniform("min_child_weight", math.log(1), math.log(64)),
        "subsample": hp.uniform("subsample", 0.5, 1.0),
        "colsample_bytree": hp.uniform("colsample_bytree", 0.4, 1.0),
        "reg_alpha": hp.loguniform("reg_alpha", math.log(1e-3), math.log(10)),
        "reg_lambda": hp.loguniform("reg_lambda", math.log(1e-2), math.log(50)),
        "gamma": hp.loguniform("gamma", math.log(1e-3), math.log(5)),
    }


def split_for_training(df: pd.DataFrame, seed: int, validation_share: float) -> tuple[pd.DataFrame, ...]:
    """Deterministic, label-stratified fit / validation / test split of a training table."""
    from sklearn.model_selection import train_test_split

    rest, test = train_test_split(df, test_size=TEST_SHARE, random_state=seed, stratify=df[LABEL])
    fit, val = train_test_split(rest, test_size=validation_share, random_state=seed + 1, stratify=rest[LABEL])
    return fit, val, test


def evaluate(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """ROC AUC, log loss, Brier, precision/recall at the decision threshold, contact rate."""
    from sklearn.metrics import brier_score_loss, log_loss, precision_score, recall_score, roc_auc_score

    y = np.asarray(y).astype(int)
    p = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    flag = p >= threshold
    both = len(np.unique(y)) == 2
    return {
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "precision_at_threshold": float(precision_score(y, flag, zero_division=0)),
        "recall_at_threshold": float(recall_score(y, flag, zero_division=0)),
        "contact_rate": float(flag.mean()),
        "rows": float(len(y)),
    }


def _xgb_params(space_point: dict[str, Any], settings: Settings) -> dict[str, Any]:
    return {
        **space_point,
        "max_depth": int(space_point["max_depth"]),
        "objective": "binary:logistic",
        "eval_metric": ["logloss", "auc"],
        "tree_method": "hist",
        "max_cat_to_onehot": 1,
        "nthread": settings.n_jobs,
        "seed": settings.seed,
        "verbosity": 0,
    }


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------
def _plots(y: np.ndarray, p: np.ndarray, importances: dict[str, float], outdir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import roc_curve

    paths = []
    fpr, tpr, _ = roc_curve(y, p)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label="model")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test split)")
    ax.legend()
    paths.append(outdir / "roc_curve.png")
    fig.savefig(paths[-1], dpi=90, bbox_inches="tight")
    plt.close(fig)

    frac, mean_pred = calibration_curve(y, p, n_bins=10, strategy="quantile")
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(mean_pred, frac, "o-", label="model")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    ax.set(xlabel="mean predicted", ylabel="observed share disengaged", title="Calibration (test split)")
    ax.legend()
    paths.append(outdir / "calibration.png")
    fig.savefig(paths[-1], dpi=90, bbox_inches="tight")
    plt.close(fig)

    top = sorted(importances.items(), key=lambda kv: kv[1])[-20:]
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.barh([k for k, _ in top], [v for _, v in top])
    ax.set(xlabel="share of total gain", title="Feature importance (top 20)")
    paths.append(outdir / "feature_importance.png")
    fig.savefig(paths[-1], dpi=90, bbox_inches="tight")
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------------------------------
# The training job
# ---------------------------------------------------------------------------------------------
def train(
    df: pd.DataFrame,
    training_set: TrainingSet,
    settings: Settings,
    *,
    reason: str = "manual",
    progress: bool = True,
    on_trial: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Tune, refit and log one model on ``df`` (the stored training set ``training_set``)."""
    import xgboost as xgb
    from hyperopt import STATUS_OK, Trials, fmin, space_eval, tpe
    from mlflow.models import infer_signature

    import mlflow

    started = time.perf_counter()
    tracking.configure(settings)
    df = df.reset_index(drop=True)
    spec = fit_spec(df)
    fit, val, test = split_for_training(df, settings.seed, settings.validation_share)
    d_fit = xgb.QuantileDMatrix(transform(fit, spec), fit[LABEL], enable_categorical=True)
    d_val = xgb.DMatrix(transform(val, spec), val[LABEL], enable_categorical=True)
    space = search_space()
    n_trials = settings.n_trials
    trial_seconds: list[float] = []

    with mlflow.start_run(run_name=f"tune-{training_set.short}") as parent:
        mlflow.set_tags(
            {
                "poleng.kind": "training",
                "poleng.reason": reason,
                "poleng.profile": settings.profile,
                "training_data_hash": training_set.hash,
                "git_commit": tracking.git_commit(),
            }
        )
        dataset = mlflow.data.from_pandas(
            df, source=str(training_set.path), targets=LABEL, name=f"train-{training_set.short}",
            digest=training_set.short,
        )
        mlflow.log_input(dataset, context="training")
        mlflow.log_params(
            {
                "training_data_hash": training_set.hash,
                "train_rows": len(df),
                "fit_rows": len(fit),
                "validation_rows": len(val),
                "test_rows": len(test),
                "n_trials": n_trials,
                "profile": settings.profile,
                "seed": settings.seed,
            }
        )

        def objective(point: dict[str, Any]) -> dict[str, Any]:
            t0 = time.perf_counter()
            params = _xgb_params(point, settings)
            history: dict[str, Any] = {}
            booster = xgb.train(
                params, d_fit, num_boost_round=settings.max_boost_rounds, evals=[(d_val, "val")],
                early_stopping_rounds=settings.early_stopping_rounds, evals_result=history, verbose_eval=False,
            )
            best = int(booster.best_iteration)
            auc = float(history["val"]["auc"][best])
            logloss = float(history["val"]["logloss"][best])
            fit_seconds = time.perf_counter() - t0
            with mlflow.start_run(run_name=f"trial-{len(trial_seconds) + 1}", nested=True):
                mlflow.set_tag("poleng.kind", "trial")
                mlflow.log_params({k: round(v, 6) if isinstance(v, float) else v for k, v in point.items()})
                mlflow.log_metrics({"val_roc_auc": auc, "val_log_loss": logloss, "best_iteration": best,
                                    "fit_seconds": fit_seconds})
            trial_seconds.append(time.perf_counter() - t0)
            if on_trial:
                on_trial(len(trial_seconds), auc)
            return {"loss": -auc, "status": STATUS_OK, "best_iteration": best}

        trials = Trials()
        with _progress(progress, n_trials) as advance:
            def tracked(point: dict[str, Any]) -> dict[str, Any]:
                result = objective(point)
                advance(-result["loss"])
                return result

            fmin(
                tracked, space, algo=tpe.suggest, max_evals=n_trials, trials=trials,
                rstate=np.random.default_rng(settings.seed), show_progressbar=False,
            )
        best_point = space_eval(space, {k: v[0] for k, v in trials.best_trial["misc"]["vals"].items()})
        best_iteration = int(trials.best_trial["result"]["best_iteration"])

        # Refit on fit+validation with the winner's iteration count; evaluate on the untouched test split.
        refit = pd.concat([fit, val])
        d_refit = xgb.QuantileDMatrix(transform(refit, spec), refit[LABEL], enable_categorical=True)
        booster = xgb.train(_xgb_params(best_point, settings), d_refit, num_boost_round=best_iteration + 1)

        with tempfile.TemporaryDirectory() as tmp:
            tmpdir = Path(tmp)
            booster.save_model(str(tmpdir / BOOSTER_FILE))
            spec.save(tmpdir / SPEC_FILE)
            model = EngagementModel().load(tmpdir / BOOSTER_FILE, tmpdir / SPEC_FILE)
            p_test = model.score(test)
            metrics = evaluate(test[LABEL].to_numpy(), p_test, settings.decision_threshold)
            importances = model.importances()
            best_params = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in best_point.items()}
            mlflow.log_params({**best_params, "best_iteration": best_iteration,
                               "decision_threshold": settings.decision_threshold})
            mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items()})
            mlflow.log_metric("best_val_roc_auc", -float(trials.best_trial["result"]["loss"]))
            for path in _plots(test[LABEL].to_numpy(), p_test, importances, tmpdir):
                mlflow.log_artifact(str(path), artifact_path="plots")
            mlflow.log_dict(importances, "feature_importance.json")
            example = test[FEATURES].head(5).reset_index(drop=True)
            signature = infer_signature(example, model.score(example))
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=EngagementModel(),
                artifacts={"booster": str(tmpdir / BOOSTER_FILE), "features": str(tmpdir / SPEC_FILE)},
                signature=signature,
                input_example=example,
                pip_requirements=_pip_requirements(),
            )
        seconds = time.perf_counter() - started
        mlflow.log_metric("training_seconds", seconds)

    return TrainResult(
        run_id=parent.info.run_id,
        model_uri=info.model_uri,
        metrics=metrics,
        params=best_params,
        best_iteration=best_iteration,
        training_set=training_set,
        model=model,
        trials=n_trials,
        seconds=seconds,
        trial_seconds=trial_seconds,
    )


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "xgboost", "pandas", "numpy", "scikit-learn")]


class _progress:
    """A rich progress bar over Hyperopt trials (silent when disabled)."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total
        self.best = float("-inf")

    def __enter__(self) -> Callable[[float], None]:
        if not self.enabled:
            return lambda auc: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("[bold]tuning[/bold]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[best]}"), transient=False,
        )
        self._bar.__enter__()
        self._task = self._bar.add_task("trials", total=self.total, best="")

        def advance(auc: float) -> None:
            self.best = max(self.best, auc)
            self._bar.update(self._task, advance=1, best=f"best val AUC {self.best:.4f}")

        return advance

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._bar.__exit__(*exc)  # type: ignore[arg-type]
