"""Champion loading (cached per version) and scoring of tables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from poleng import contract, registry
from poleng.model import EngagementModel
from poleng.settings import Settings

SCORE = "score"


class NoChampionError(RuntimeError):
    """Nothing to score with yet."""


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: str
    model: EngagementModel

    def score(self, df: pd.DataFrame) -> np.ndarray:
        return self.model.score(df)


_cache: dict[tuple[str, str, str], LoadedModel] = {}


def load_version(settings: Settings, version: str) -> LoadedModel:
    """Load ``models:/<name>/<version>`` once per process; later calls reuse it."""
    key = (settings.resolved_tracking_uri, settings.model_name, version)
    if key not in _cache:
        import mlflow.pyfunc

        registry.client(settings)  # configures tracking/registry URIs
        pyfunc = mlflow.pyfunc.load_model(f"models:/{settings.model_name}/{version}")
        _cache[key] = LoadedModel(settings.model_name, version, pyfunc.unwrap_python_model())
    return _cache[key]


def load_champion(settings: Settings) -> LoadedModel:
    """Resolve ``models:/<name>@champion`` to its version and load it (cached per version)."""
    version = registry.alias_version(settings, registry.CHAMPION)
    if version is None:
        raise NoChampionError(
            f"no champion for model {settings.model_name!r} at {settings.resolved_tracking_uri}; "
            "run `poleng init` first"
        )
    return load_version(settings, version)


def clear_cache() -> None:
    _cache.clear()


def score_file(src: Path, dst: Path, settings: Settings) -> tuple[int, str]:
    """Score every row of any contract table with the champion; write it back with a ``score`` column.

    All other columns (a label or ids included) are kept untouched. Returns (rows, model version).
    """
    raw = contract.read_table(src)
    features = contract.scoring_features(raw, source=src.name)
    champion = load_champion(settings)
    out = raw.copy()
    out[SCORE] = champion.score(features)
    write_table(out, dst)
    return len(out), champion.version


def write_table(df: pd.DataFrame, dst: Path) -> None:
    """Write CSV or Parquet (by suffix) atomically: a temporary file in the same folder, then rename."""
    suffix = dst.suffix.lower()
    if suffix not in contract.SUPPORTED_SUFFIXES:
        raise contract.ContractError(f"{dst.name}: output must end in .csv or .parquet", reason="wrong_extension")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    if suffix == ".parquet":
        df.to_parquet(tmp, index=False)
    else:
        df.to_csv(tmp, index=False)
    os.replace(tmp, dst)


# ---------------------------------------------------------------------------------------------
# The contact file (contract documented in docs/contact_file.md)
# ---------------------------------------------------------------------------------------------
CONTACT_CONTRACT_VERSION = "1.0"
CONTACT_COLUMNS = [
    "subject_id", "country", "sex", "education", "citizenship", "score", "rank",
    "batch_id", "model_name", "model_version", "scored_at",
]  # fmt: skip


def contact_frame(
    batch: pd.DataFrame,
    scores: np.ndarray,
    *,
    threshold: float,
    capacity: int | None,
    batch_id: str,
    model_name: str,
    model_version: str,
    scored_at: str,
) -> pd.DataFrame:
    """The people to contact: score >= threshold, highest first, at most ``capacity`` rows.

    Rank 1 is the highest score; ties are broken by ``subject_id`` so the file is reproducible.
    """
    df = batch[["subject_id", "country", "sex", "education", "citizenship"]].copy()
    df["score"] = np.round(np.asarray(scores, dtype=float), 6)
    df = df[df["score"] >= threshold].sort_values(["score", "subject_id"], ascending=[False, True])
    if capacity is not None:
        df = df.head(capacity)
    df["rank"] = np.arange(1, len(df) + 1, dtype=np.int64)
    df["batch_id"] = batch_id
    df["model_name"] = model_name
    df["model_version"] = str(model_version)
    df["scored_at"] = scored_at
    df["education"] = df["education"].astype("int64")
    return df[CONTACT_COLUMNS].reset_index(drop=True)


def write_contacts(contacts: pd.DataFrame, stem: Path) -> tuple[Path, Path]:
    """Write ``<stem>.csv`` and ``<stem>.parquet`` atomically; same stem on a rerun = same files."""
    csv, parquet = stem.parent / f"{stem.name}.csv", stem.parent / f"{stem.name}.parquet"
    write_table(contacts, parquet)
    write_table(contacts, csv)
    return csv, parquet
