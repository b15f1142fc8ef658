"""Feature encoding shared by training and scoring.

String-code columns become pandas categoricals whose categories are frozen at training time, so
XGBoost's native categorical support sees the same code -> index mapping at scoring time. A code
never seen in training (a new country, say) becomes a missing value: the trees route it down their
default branch instead of crashing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from poleng.contract import CATEGORICAL, FEATURES


@dataclass(frozen=True)
class FeatureSpec:
    """Frozen encoding: the categories each string-code column had in the training data."""

    categories: dict[str, list[str]]

    def to_json(self) -> str:
        return json.dumps({"features": FEATURES, "categories": self.categories}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        return cls(categories=json.loads(text)["categories"])

    def save(self, path: Path) -> None:
        path.write_text(self.to_json())

    @classmethod
    def load(cls, path: Path) -> FeatureSpec:
        return cls.from_json(path.read_text())


def fit_spec(df: pd.DataFrame) -> FeatureSpec:
    """Record the sorted categories of every string-code column."""
    return FeatureSpec({c: sorted(pd.unique(df[c].astype(str)).tolist(), key=_code_key) for c in CATEGORICAL})


def _code_key(v: str) -> tuple[int, str]:
    return (int(v), v) if v.isdigit() else (10**9, v)


def transform(df: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Model input: contract features only, categoricals with frozen categories, integers as float32."""
    out = {}
    for col in FEATURES:
        if col in spec.categories:
            out[col] = pd.Categorical(df[col].astype(str), categories=spec.categories[col])
        else:
            out[col] = df[col].to_numpy(dtype=np.float32, na_value=np.nan)
    return pd.DataFrame(out, index=df.index)


def unseen_codes(df: pd.DataFrame, spec: FeatureSpec) -> dict[str, dict[str, int]]:
    """Per column, codes present in ``df`` but absent from the training categories, with counts."""
    found: dict[str, dict[str, int]] = {}
    for col, cats in spec.categories.items():
        counts = df[col].astype(str).value_counts()
        new = counts[~counts.index.isin(cats)]
        if len(new):
            found[col] = {str(k): int(v) for k, v in new.items()}
    return found
