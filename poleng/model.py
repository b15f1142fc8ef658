"""The model artifact: an XGBoost booster plus its frozen feature encoding, as an MLflow pyfunc.

The registered model takes raw contract columns (string codes and integers) and returns the
probability of being politically disengaged, so ``models:/<name>@champion`` is self-contained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from poleng.features import FeatureSpec, transform
from poleng.tracking import quiet_mlflow

quiet_mlflow()
import mlflow.pyfunc  # noqa: E402  (after the warning filters)

BOOSTER_FILE = "booster.ubj"
SPEC_FILE = "features.json"


class EngagementModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: ``predict`` returns P(disengaged) for each row of a contract frame."""

    def __init__(self) -> None:
        self.booster: Any = None
        self.spec: FeatureSpec | None = None

    # MLflow calls this when the model is loaded from the registry or a run.
    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.load(Path(context.artifacts["booster"]), Path(context.artifacts["features"]))

    def load(self, booster_path: Path, spec_path: Path) -> EngagementModel:
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(str(booster_path))
        booster.set_param({"nthread": 2})
        self.booster = booster
        self.spec = FeatureSpec.load(spec_path)
        return self

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:  # type: ignore[override]
        return self.score(model_input)

    def score(self, df: pd.DataFrame) -> np.ndarray:
        """Probabilities for the contract feature columns of ``df`` (other columns are ignored)."""
        import xgboost as xgb

        assert self.booster is not None and self.spec is not None, "model not loaded"
        dm = xgb.DMatrix(transform(df, self.spec), enable_categorical=True)
        return self.booster.predict(dm).astype(np.float64)

    def importances(self) -> dict[str, float]:
        """Total gain per feature, normalised to sum to 1 (features never split on get 0)."""
        from poleng.contract import FEATURES

        gain = self.booster.get_score(importance_type="total_gain")
        total = sum(gain.values()) or 1.0
        return {f: float(gain.get(f, 0.0)) / total for f in FEATURES}
