"""Versioned, immutable training sets stored under their content hash.

Every table the system trains on is written once to ``datasets/<hash>.parquet`` (read-only) with a
small JSON manifest of its lineage. Training runs record the hash and row counts.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from poleng.contract import LABEL, SUBJECT_ID, TABLE_COLUMNS
from poleng.settings import Settings


@dataclass(frozen=True)
class TrainingSet:
    hash: str
    path: Path
    rows: int
    positives: int
    parents: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    @property
    def short(self) -> str:
        return self.hash[:12]


def content_hash(df: pd.DataFrame) -> str:
    """sha256 over the column names and a row-order-sensitive hash of the values."""
    h = hashlib.sha256("|".join(map(str, df.columns)).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()


def file_hash(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (batch identity)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_once(df: pd.DataFrame, path: Path) -> None:
    """Write ``path`` read-only, atomically, unless it exists (its name is its content's hash)."""
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    df.to_parquet(tmp, index=False)
    os.chmod(tmp, 0o444)
    os.replace(tmp, path)


def _canonical(df: pd.DataFrame) -> pd.DataFrame:
    """Training tables keep contract columns only, in contract order."""
    return df[TABLE_COLUMNS].reset_index(drop=True)


def store(df: pd.DataFrame, settings: Settings, *, parents: list[str] | None = None,
          sources: list[str] | None = None) -> TrainingSet:
    """Store a training table immutably; storing identical content again returns the same set."""
    df = _canonical(df)
    digest = content_hash(df)
    settings.datasets.mkdir(parents=True, exist_ok=True)
    path = settings.datasets / f"{digest}.parquet"
    manifest = settings.datasets / f"{digest}.json"
    ts = TrainingSet(digest, path, len(df), int(df[LABEL].sum()), parents or [], sources or [])
    _write_once(df, path)
    if not manifest.exists():
        meta = {**asdict(ts), "path": str(path), "created": datetime.now(UTC).isoformat()}
        atomic_write_bytes(manifest, json.dumps(meta, indent=1).encode())
    return ts


def load(digest: str, settings: Settings) -> pd.DataFrame:
    path = settings.datasets / f"{digest}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"training set {digest[:12]} not found under {settings.datasets}")
    return pd.read_parquet(path)


def info(digest: str, settings: Settings) -> TrainingSet:
    meta = json.loads((settings.datasets / f"{digest}.json").read_text())
    meta.pop("created", None)
    meta["path"] = Path(meta["path"])
    return TrainingSet(**meta)


def merge(base: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Append labelled field rows to a training table (contract columns; subject ids dropped)."""
    parts = [base.drop(columns=[SUBJECT_ID], errors="ignore"), new.drop(columns=[SUBJECT_ID], errors="ignore")]
    return _canonical(pd.concat(parts, ignore_index=True))


# ---------------------------------------------------------------------------------------------
# Pointers: the newest training set, and the newest labelled evaluation slice
# ---------------------------------------------------------------------------------------------
def _pointer(settings: Settings, name: str) -> Path:
    return settings.datasets / f"{name}.current"


def set_current(settings: Settings, ts: TrainingSet) -> None:
    """Mark ``ts`` as the newest training set (what ``poleng train`` and the next merge start from)."""
    atomic_write_bytes(_pointer(settings, "training"), ts.hash.encode())


def current(settings: Settings) -> TrainingSet | None:
    p = _pointer(settings, "training")
    return info(p.read_text().strip(), settings) if p.exists() else None


def store_eval_slice(df: pd.DataFrame, settings: Settings, *, make_current: bool = True) -> str:
    """Keep a labelled slice of the newest field data, never trained on, for promotion decisions."""
    df = _canonical(df)
    digest = content_hash(df)
    path = settings.datasets / f"eval-{digest}.parquet"
    _write_once(df, path)
    if make_current:
        set_current_eval_slice(settings, digest)
    return digest


def set_current_eval_slice(settings: Settings, digest: str) -> None:
    atomic_write_bytes(_pointer(settings, "eval"), digest.encode())


def current_eval_slice(settings: Settings) -> pd.DataFrame | None:
    p = _pointer(settings, "eval")
    if not p.exists():
        return None
    return pd.read_parquet(settings.datasets / f"eval-{p.read_text().strip()}.parquet")
