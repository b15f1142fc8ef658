"""The MLflow tracking server of the native stack, end to end.

A fresh client logs a run (param, metric, artifact) and registers a model with alias ``champion``;
the rows must be in PostgreSQL, the objects in the S3 bucket, and a separate process with no S3
credentials at all must load ``models:/<name>@champion`` (artifacts are proxied by the server).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from poleng import stack

if TYPE_CHECKING:  # the fixture's type; conftest itself is loaded by pytest
    from conftest import NativeStack

pytestmark = pytest.mark.stack

LOAD_MODEL = """
import json, sys
import mlflow
import pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
rows = pd.DataFrame(json.loads(sys.argv[3]))
print(json.dumps([int(v) for v in model.predict(rows)]))
"""


def test_services_are_up(native_stack: NativeStack) -> None:
    states = {s.name: s for s in stack.status(native_stack.settings)}
    for name in ("postgres", "s3", "mlflow"):
        assert states[name].state == "running", states[name]
        assert states[name].healthy, states[name]
        assert stack.log_path(native_stack.settings, name).exists()
    assert states["mage"].state in {"stopped", "skipped"}
    assert set(native_stack.startup) == {"postgres", "s3", "mlflow"}


def test_up_again_reuses_running_services(native_stack: NativeStack) -> None:
    assert stack.up(native_stack.settings, with_mage=False) == {}


def test_run_and_registered_model_round_trip(native_stack: NativeStack, tmp_path: Path) -> None:
    import numpy as np
    import pandas as pd
    import sqlalchemy as sa
    from sklearn.linear_model import LogisticRegression

    import mlflow
    from mlflow import MlflowClient

    settings = native_stack.settings
    uri = native_stack.tracking_uri
    client = MlflowClient(tracking_uri=uri)
    suffix = uuid.uuid4().hex[:8]
    model_name = f"stack-test-model-{suffix}"
    exp_id = client.create_experiment(f"stack-test-{suffix}")
    assert client.get_experiment(exp_id).artifact_location.startswith("mlflow-artifacts:")

    rng = np.random.default_rng(0)
    features = pd.DataFrame(rng.normal(size=(200, 3)), columns=["age", "interest", "trust"])
    target = (features["interest"] + 0.5 * features["trust"] > 0).astype(int)
    model = LogisticRegression().fit(features, target)
    notes = tmp_path / "notes.txt"
    notes.write_text("native stack round trip\n")

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=exp_id) as run:
            mlflow.log_param("C", 1.0)
            mlflow.log_metric("auc", 0.91)
            mlflow.log_artifact(str(notes))
            info = mlflow.sklearn.log_model(
                model, name="model", registered_model_name=model_name, input_example=features.head(3)
            )
    finally:
        mlflow.set_tracking_uri(previous)
    run_id = run.info.run_id
    version = str(info.registered_model_version)
    client.set_registered_model_alias(model_name, "champion", version)
    assert client.get_model_version_by_alias(model_name, "champion").version == version

    # PostgreSQL holds the tracking and registry rows.
    engine = sa.create_engine(stack.database_url(settings, settings.mlflow_db))
    try:
        with engine.connect() as conn:
            one = conn.execute
            assert one(sa.text("SELECT status FROM runs WHERE run_uuid = :r"), {"r": run_id}).scalar() == "FINISHED"
            assert one(
                sa.text("SELECT value FROM params WHERE run_uuid = :r AND key = 'C'"), {"r": run_id}
            ).scalar() == "1.0"
            assert one(
                sa.text("SELECT value FROM metrics WHERE run_uuid = :r AND key = 'auc'"), {"r": run_id}
            ).scalar() == pytest.approx(0.91)
            versions = one(
                sa.text("SELECT version, run_id FROM model_versions WHERE name = :n"), {"n": model_name}
            ).all()
            assert [(str(v), r) for v, r in versions] == [(version, run_id)]
            alias = one(
                sa.text("SELECT version FROM registered_model_aliases WHERE name = :n AND alias = 'champion'"),
                {"n": model_name},
            ).scalar()
            assert str(alias) == version
    finally:
        engine.dispose()

    # The artifact objects are in the bucket (written by the server, not by this client).
    s3 = stack.s3_client(settings)
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket, Prefix=f"{exp_id}/"):
        keys += [obj["Key"] for obj in page.get("Contents", [])]
    assert f"{exp_id}/{run_id}/artifacts/notes.txt" in keys, keys
    assert any(k.endswith("/MLmodel") for k in keys), keys
    assert any(k.rsplit("/", 1)[-1].startswith("model.") for k in keys), keys  # model.skops / .pkl

    # A fresh process without any S3 credentials loads the champion through the server.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env["HOME"] = str(tmp_path)  # no ~/.aws either
    rows = features.head(5)
    result = subprocess.run(
        [sys.executable, "-c", LOAD_MODEL, uri, f"models:/{model_name}@champion", rows.to_json(orient="columns")],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    predicted = json.loads(result.stdout.strip().splitlines()[-1])
    assert predicted == [int(v) for v in model.predict(rows)]
