"""The survey contract: good tables pass; each kind of bad table fails with a one-line message."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from poleng import contract
from poleng.contract import BatchRejected, ContractError


def table(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data: dict[str, object] = {"country": rng.choice(["32", "76", "840"], n).astype(object)}
    for col in contract.FEATURES[1:]:
        lo, hi = contract.STRING_CODES.get(col) or contract.INTEGER_CODES[col]
        codes = rng.integers(lo, hi + 1, n)
        data[col] = codes.astype(str).astype(object) if col in contract.STRING_CODES else codes.astype("int64")
    data[contract.LABEL] = rng.integers(0, 2, n)
    return pd.DataFrame(data)


def batch(n: int = 300, seed: int = 0) -> pd.DataFrame:
    df = table(n, seed).drop(columns=contract.LABEL)
    df[contract.SUBJECT_ID] = [str(uuid.UUID(int=i + 1, version=4)) for i in range(n)]
    return df


def test_good_table_passes_with_canonical_types() -> None:
    out = contract.validate_table(table())
    assert list(out.columns) == contract.TABLE_COLUMNS
    assert all(out[c].dtype == object for c in contract.CATEGORICAL)
    assert all(out[c].dtype == "int64" for c in [*contract.NUMERICAL, contract.LABEL])


@pytest.mark.parametrize(
    ("mutate", "reason", "needle"),
    [
        (lambda d: d.drop(columns=["religion"]), "columns", "missing columns ['religion']"),
        (lambda d: d.assign(extra=1), "columns", "unexpected columns ['extra']"),
        (lambda d: d.assign(sex=d["sex"].astype(int)), "wrong_types", "'sex'"),
        (lambda d: d.assign(education=d["education"] + 0.5), "wrong_types", "'education'"),
        (lambda d: d.assign(religion=d["religion"].where(d.index > 2, "11")), "unknown_code", "'religion'"),
        (lambda d: d.assign(education=d["education"].where(d.index > 0, 12)), "unknown_code", "[12]"),
        (lambda d: d.assign(country=d["country"].where(d.index > 0, "XX")), "unknown_code", "'XX'"),
        (lambda d: d.assign(political_engagement=d[contract.LABEL].where(d.index > 0, 2)), "unknown_code", "0 or 1"),
        (lambda d: d.iloc[0:0], "empty", "empty"),
        (lambda d: d.assign(mode=d["mode"].where(d.index > 0, None)), "missing", "'mode'"),
    ],
)
def test_bad_tables_fail_with_one_line_naming_the_column(mutate, reason: str, needle: str) -> None:
    with pytest.raises(ContractError) as err:
        contract.validate_table(mutate(table()), source="t.parquet")
    message = str(err.value)
    assert err.value.reason == reason
    assert needle in message
    assert "\n" not in message
    assert message.startswith("t.parquet:")


def test_csv_round_trip_keeps_codes_as_strings(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    table().to_csv(path, index=False)
    out = contract.load_table(path)
    pd.testing.assert_frame_equal(out, contract.validate_table(table()))


def test_unreadable_and_wrong_extension(tmp_path: Path) -> None:
    bad = tmp_path / "t.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(ContractError) as err:
        contract.load_table(bad)
    assert err.value.reason == "unreadable"
    with pytest.raises(ContractError) as err:
        contract.load_table(tmp_path / "t.xlsx")
    assert err.value.reason == "wrong_extension"


def test_batch_row_problems_are_split_off_with_reasons() -> None:
    df = batch(200)
    df.loc[3, "education"] = 12
    df.loc[4, "sex"] = None
    df.loc[6, contract.SUBJECT_ID] = df.loc[5, contract.SUBJECT_ID]
    df.loc[7, "religion"] = "99"
    result = contract.validate_batch(df)
    assert len(result.valid) == 195
    reasons = result.rejected["reason"].to_dict()
    assert reasons == {
        3: "unknown_code:education=12",
        4: "missing:sex",
        5: "duplicate_subject_id",
        6: "duplicate_subject_id",
        7: "unknown_code:religion=99",
    }


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d.iloc[0:0], "empty"),
        (lambda d: d.drop(columns=["education"]), "missing_columns"),
        (lambda d: d.assign(political_engagement=1), "label_present"),
        (lambda d: d.assign(sex=d["sex"].map({"1": "male", "2": "female"}).astype("category").cat.codes),
         "wrong_types"),
    ],
)
def test_whole_batch_problems_raise_machine_readable_reasons(mutate, reason: str) -> None:
    with pytest.raises(BatchRejected) as err:
        contract.validate_batch(mutate(batch()))
    assert err.value.reason == reason


def _poleng(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "poleng", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.drop(columns=["savings"]), "missing columns ['savings']"),
        (lambda d: d.assign(education=d["education"].where(d.index > 0, 42)), "'education'"),
        (lambda d: d.assign(political_engagement=d[contract.LABEL].where(d.index > 0, 7)), "political_engagement"),
    ],
)
def test_init_on_a_bad_real_table_exits_nonzero_and_writes_nothing(tmp_path: Path, mutate, needle: str) -> None:
    import os

    data = tmp_path / "real.parquet"
    mutate(table()).to_parquet(data)
    home = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POLENG_", "MLFLOW_"))}
    env |= {"POLENG_HOME": str(home), "POLENG_DATA": str(data)}
    proc = _poleng("init", env=env)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0] and "Traceback" not in proc.stderr
    assert not home.exists() or not any(home.rglob("*")), list(home.rglob("*"))


def test_data_validate_command_reports_the_problem(tmp_path: Path) -> None:
    import os

    data = tmp_path / "real.csv"
    t = table()
    t.loc[5, "religion"] = "13"
    t.to_csv(data, index=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POLENG_", "MLFLOW_"))}
    proc = _poleng("data", "validate", str(data), env=env)
    assert proc.returncode == 1
    assert "'religion'" in proc.stderr and "'13'" in proc.stderr and "Traceback" not in proc.stderr
    t.loc[5, "religion"] = "3"
    t.to_csv(data, index=False)
    proc = _poleng("data", "validate", str(data), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "valid, 300 rows" in proc.stdout
