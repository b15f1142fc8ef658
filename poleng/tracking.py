"""MLflow tracking set-up shared by training and monitoring (runs, experiments; not the registry)."""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from pathlib import Path

from poleng.settings import Settings

_configured: dict[str, str] = {}


def quiet_mlflow() -> None:
    """Keep MLflow's own chatter (migrations, download bars, schema hints) out of the terminal."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    for pattern in (
        r"Field \"model_name\" .* protected namespace",
        r"The specified dataset source can be interpreted",
        r"Hint: Inferred schema contains integer column",
    ):
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("mlflow", "alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.ERROR)


def configure(settings: Settings, experiment: str | None = None) -> str:
    """Point MLflow at the settings' tracking URI and make sure ``experiment`` exists; return its id.

    Embedded mode keeps artifacts under ``<home>/mlartifacts``; against a server the server decides
    (proxied artifacts), so clients never need object-store credentials.
    """
    quiet_mlflow()
    import mlflow

    uri = settings.resolved_tracking_uri
    if settings.is_embedded:
        settings.home.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = experiment or settings.experiment
    key = f"{uri}|{name}"
    if key in _configured:
        mlflow.set_experiment(experiment_id=_configured[key])
        return _configured[key]
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = settings.mlartifacts.as_uri() if settings.is_embedded else None
        exp_id = client.create_experiment(name, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    _configured[key] = exp_id
    return exp_id


def reset_cache() -> None:
    _configured.clear()


def git_commit() -> str:
    """The commit of the code that is running, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def find_run(settings: Settings, experiment: str, tags: dict[str, str]) -> str | None:
    """The id of a run in ``experiment`` carrying all ``tags``, or None."""
    quiet_mlflow()
    from mlflow import MlflowClient

    client = MlflowClient(settings.resolved_tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    runs = client.search_runs([exp.experiment_id], filter_string=query, max_results=1)
    return runs[0].info.run_id if runs else None


def set_tags(settings: Settings, run_id: str, tags: dict[str, str]) -> None:
    quiet_mlflow()
    from mlflow import MlflowClient

    client = MlflowClient(settings.resolved_tracking_uri)
    for k, v in tags.items():
        client.set_tag(run_id, k, v)
