"""Scenarios: data files in ``scenarios/`` that stage batches and field data, then run the loop.

Every batch and every field drop is cut from the configured source's splits (generated data by
default, the real table when ``POLENG_DATA`` names one), so every scenario also runs on real data.
A scenario is a TOML file of ordered steps; ``simulate`` stages each step and, after each batch,
runs ``flow.process_inbox`` exactly as a scheduler would.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from poleng import contract, lifecycle, synth
from poleng.flow import BatchResult, process_inbox
from poleng.settings import Settings

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"
DEFECTS = ("none", "empty", "missing_column", "unknown_codes", "bad_rows", "not_data", "duplicate",
           "broken_csv", "wrong_types", "label_present")


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the file and the problem."""


@dataclass
class Step:
    kind: str  # batch | field
    name: str = ""
    rows: int = 0
    mix: dict[str, float] = field(default_factory=dict)
    format: str = "parquet"
    defect: str = "none"
    duplicate_of: str = ""
    chunks: list[int] = field(default_factory=list)
    corrupt_labels: bool = False
    expect: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scenario:
    name: str
    description: str
    steps: list[Step]
    path: Path

    @property
    def batches(self) -> list[Step]:
        return [s for s in self.steps if s.kind == "batch"]


def available() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def load(name: str) -> Scenario:
    """Read and check ``scenarios/<name>.toml``."""
    path = SCENARIO_DIR / f"{name}.toml"
    if not path.exists():
        raise ScenarioError(f"unknown scenario {name!r}; available: {', '.join(available())}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path.name}: not valid TOML: {exc}") from None
    steps = []
    for i, raw in enumerate(data.get("steps", [])):
        try:
            step = Step(**raw)
        except TypeError as exc:
            raise ScenarioError(f"{path.name}: step {i + 1}: {exc}") from None
        if step.kind not in ("batch", "field"):
            raise ScenarioError(f"{path.name}: step {i + 1}: kind must be 'batch' or 'field'")
        if step.defect not in DEFECTS:
            raise ScenarioError(f"{path.name}: step {i + 1}: unknown defect {step.defect!r}")
        steps.append(step)
    return Scenario(data.get("name", name), data.get("description", "").strip(), steps, path)


# ---------------------------------------------------------------------------------------------
# Cutting batches and field drops from the source splits
# ---------------------------------------------------------------------------------------------
class _Pools:
    """Deterministic draws without replacement from each split pool (reshuffled when exhausted)."""

    def __init__(self, splits: synth.Splits, seed: int):
        self.frames = {"initial_pool": splits.initial_pool, "later_pool": splits.later_pool}
        self.rng = np.random.default_rng(seed)
        self.order: dict[str, np.ndarray] = {}
        self.cursor: dict[str, int] = {}

    def take(self, pool: str, n: int) -> pd.DataFrame:
        if pool not in self.frames:
            raise ScenarioError(f"unknown pool {pool!r}; use initial_pool or later_pool")
        frame = self.frames[pool]
        parts, need = [], n
        while need > 0:
            if pool not in self.order or self.cursor[pool] >= len(frame):
                self.order[pool] = self.rng.permutation(len(frame))
                self.cursor[pool] = 0
            start = self.cursor[pool]
            idx = self.order[pool][start:start + need]
            self.cursor[pool] = start + len(idx)
            parts.append(frame.iloc[idx])
            need -= len(idx)
        out = pd.concat(parts, ignore_index=True)
        # A row drawn a second time (pool exhausted) is a new person: give it a fresh id.
        dup = out[contract.SUBJECT_ID].duplicated()
        if dup.any():
            out.loc[dup, contract.SUBJECT_ID] = synth.subject_ids(self.rng, int(dup.sum()))
        return out

    def batch(self, step: Step) -> pd.DataFrame:
        mix = step.mix or {"initial_pool": 1.0}
        total = sum(mix.values())
        names = list(mix)
        counts = [int(round(step.rows * mix[k] / total)) for k in names]
        counts[-1] = step.rows - sum(counts[:-1])
        frame = pd.concat([self.take(k, c) for k, c in zip(names, counts, strict=True) if c > 0],
                          ignore_index=True)
        frame = frame.iloc[self.rng.permutation(len(frame))].reset_index(drop=True)
        return frame[contract.BATCH_COLUMNS]


def _scenario_seed(settings: Settings, name: str) -> int:
    return int(hashlib.sha256(f"{settings.seed}:{name}".encode()).hexdigest()[:8], 16)


def _write_batch(frame: pd.DataFrame, step: Step, path: Path, rng: np.random.Generator,
                 written: dict[str, tuple[str, bytes]]) -> Path:
    """Write a batch file, applying the step's defect."""
    from poleng.scoring import write_table

    defect = step.defect
    if defect == "not_data":
        path = path.with_suffix(".txt")
        path.write_text("call list notes from the field office, not a data file\n")
        return path
    if defect == "duplicate":
        if step.duplicate_of not in written:
            raise ScenarioError(f"step {step.name!r}: duplicate_of {step.duplicate_of!r} is not an earlier batch")
        suffix, content = written[step.duplicate_of]
        path = path.with_suffix(suffix)
        path.write_bytes(content)
        return path
    if defect == "broken_csv":
        path = path.with_suffix(".csv")
        frame.to_csv(path, index=False)
        lines = path.read_text().splitlines()
        mid = len(lines) // 2
        lines[mid] = lines[mid] + ",EXTRA,FIELDS"
        path.write_text("\n".join(lines) + "\n")
        return path
    if defect == "empty":
        frame = frame.iloc[0:0]
    elif defect == "missing_column":
        frame = frame.drop(columns=["education"])
    elif defect == "label_present":
        frame = frame.assign(**{contract.LABEL: 0})
    elif defect == "wrong_types":
        frame = frame.assign(sex=frame["sex"].map({"1": "male", "2": "female"}))
    elif defect in ("unknown_codes", "bad_rows"):
        share = 0.5 if defect == "unknown_codes" else 0.04
        bad = rng.random(len(frame)) < share
        frame = frame.copy()
        frame.loc[bad, "religion"] = "99"
        frame.loc[bad[::-1] & (rng.random(len(frame)) < 0.3), "education"] = 12
    write_table(frame, path)
    return path


def stage_batch(settings: Settings, step: Step, frame: pd.DataFrame, index: int, rng: np.random.Generator,
                written: dict[str, tuple[str, bytes]]) -> Path:
    """Write one batch into the inbox atomically (hidden temporary name, then rename)."""
    settings.inbox.mkdir(parents=True, exist_ok=True)
    suffix = ".csv" if step.format == "csv" else ".parquet"
    final = settings.inbox / f"{index:02d}-{step.name}{suffix}"
    tmp_dir = settings.inbox / ".staging"
    tmp_dir.mkdir(exist_ok=True)
    tmp = _write_batch(frame, step, tmp_dir / final.name, rng, written)
    final = final.with_suffix(tmp.suffix)
    written[step.name] = (tmp.suffix, tmp.read_bytes())
    os.replace(tmp, final)
    return final


def stage_field(settings: Settings, scenario: str, step: Step, splits: synth.Splits,
                rng: np.random.Generator) -> list[Path]:
    """Drop labelled field chunks into ``field_studies/`` (labels shuffled when ``corrupt_labels``)."""
    from poleng.scoring import write_table

    settings.field_studies.mkdir(parents=True, exist_ok=True)
    out = []
    for i in step.chunks or list(range(len(splits.field))):
        if i >= len(splits.field):
            raise ScenarioError(f"field chunk {i} does not exist (the source has {len(splits.field)})")
        chunk = splits.field[i].copy()
        if step.corrupt_labels:
            chunk[contract.LABEL] = rng.permutation(chunk[contract.LABEL].to_numpy())
        name = f"{scenario}-{step.name or 'field'}-chunk{i}{'-corrupted' if step.corrupt_labels else ''}.parquet"
        path = settings.field_studies / name
        write_table(chunk, path)
        out.append(path)
    return out


# ---------------------------------------------------------------------------------------------
# Running a scenario
# ---------------------------------------------------------------------------------------------
@dataclass
class StepOutcome:
    step: Step
    file: str
    result: BatchResult | None = None
    field_files: list[str] = field(default_factory=list)


@dataclass
class SimulationReport:
    scenario: str
    outcomes: list[StepOutcome]
    champion_before: str | None
    champion_after: str | None
    later_auc_before: float | None
    later_auc_after: float | None
    seconds: float

    @property
    def results(self) -> list[BatchResult]:
        return [o.result for o in self.outcomes if o.result is not None]


def simulate(
    name: str,
    settings: Settings,
    *,
    progress: bool = False,
    on_step: Callable[[StepOutcome], None] | None = None,
) -> SimulationReport:
    """Stage scenario ``name`` step by step, running the batch loop after each batch."""
    import time

    from poleng import registry

    t0 = time.perf_counter()
    scenario = load(name)
    if registry.alias_version(settings, registry.CHAMPION) is None:
        lifecycle.init_project(settings, progress=progress)
    splits = lifecycle.prepare_source(settings)
    seed = _scenario_seed(settings, scenario.name)
    pools = _Pools(splits, seed)
    rng = np.random.default_rng(seed + 1)
    before = registry.alias_version(settings, registry.CHAMPION)
    auc_before = lifecycle.later_country_auc(settings, before) if before else None
    outcomes: list[StepOutcome] = []
    written: dict[str, tuple[str, bytes]] = {}
    for index, step in enumerate(scenario.steps, start=1):
        if step.kind == "field":
            files = stage_field(settings, scenario.name, step, splits, rng)
            outcome = StepOutcome(step, ", ".join(p.name for p in files), field_files=[p.name for p in files])
        else:
            frame = pools.batch(step) if step.defect not in ("not_data", "duplicate") else pd.DataFrame()
            path = stage_batch(settings, step, frame, index, rng, written)
            results = process_inbox(settings, progress=progress)
            mine = [r for r in results if r.file_name == path.name]
            outcome = StepOutcome(step, path.name, mine[0] if mine else None)
        outcomes.append(outcome)
        if on_step:
            on_step(outcome)
    after = registry.alias_version(settings, registry.CHAMPION)
    auc_after = lifecycle.later_country_auc(settings, after) if after else None
    return SimulationReport(scenario.name, outcomes, before, after, auc_before, auc_after, time.perf_counter() - t0)
