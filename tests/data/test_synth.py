"""Tests of poleng.synth: the generated table's schema and structure, the splits, and the AUC gaps."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from poleng import contract, synth
from poleng.contract import CATEGORICAL, COUNTRY, FEATURES, LABEL, NUMERICAL, SUBJECT_ID, TABLE_COLUMNS

UUID4_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return synth.generate(seed=42, rows=12_000)


@pytest.fixture(scope="module")
def splits(table: pd.DataFrame) -> synth.Splits:
    return synth.split_source(table, seed=42)


def _codes(df: pd.DataFrame) -> pd.Series:
    return df[COUNTRY].astype(int)


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------
def test_generated_table_passes_the_contract_unchanged(table: pd.DataFrame) -> None:
    validated = contract.validate_table(table)
    pd.testing.assert_frame_equal(validated, table)
    assert list(table.columns) == TABLE_COLUMNS
    assert len(table) == 12_000


def test_dtypes_are_the_contracts(table: pd.DataFrame) -> None:
    for col in CATEGORICAL:
        assert table[col].dtype == object, col
        assert table[col].map(type).eq(str).all(), col
    for col in [*NUMERICAL, LABEL]:
        assert table[col].dtype == np.int64, col


def test_every_code_of_small_columns_occurs(table: pd.DataFrame) -> None:
    """Not just valid codes: the answer scales are used, as in the real table."""
    for col, (lo, hi) in {**contract.STRING_CODES, **contract.INTEGER_CODES}.items():
        if hi - lo <= 5:
            present = set(table[col].astype(int))
            assert present == set(range(lo, hi + 1)), col


def test_label_rate_is_about_one_in_three(table: pd.DataFrame) -> None:
    assert 0.25 <= table[LABEL].mean() <= 0.42
    assert set(table[LABEL].unique()) == {0, 1}


def test_country_counts_and_row_shares() -> None:
    df = synth.generate(seed=3, rows=20_000)
    codes = _codes(df)
    initial, later = codes[codes < 500], codes[codes >= 500]
    assert initial.nunique() == 37
    assert later.nunique() == 27
    assert 0.57 <= len(initial) / len(df) <= 0.61
    assert not df[COUNTRY].str.startswith("0").any()
    sizes = codes.value_counts()
    assert sizes.max() / sizes.min() > 1.8  # uneven country sizes
    assert set(codes.unique()) <= set(synth._CODE_PREFERENCE)  # real ISO codes


@pytest.mark.parametrize(("countries", "n_initial"), [(16, 9), (100, 58), (200, 116)])
def test_country_counts_scale(countries: int, n_initial: int) -> None:
    df = synth.generate(seed=1, rows=countries * 40, countries=countries)
    codes = _codes(df)
    assert codes.nunique() == countries
    assert (codes.drop_duplicates() < 500).sum() == n_initial


def test_later_code_is_respected() -> None:
    df = synth.generate(seed=1, rows=6_400, later_code=300)
    codes = _codes(df).drop_duplicates()
    assert (codes < 300).sum() == 37
    assert (codes >= 300).sum() == 27


def test_too_few_rows_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least 10 per country"):
        synth.generate(seed=1, rows=500)


def test_default_size() -> None:
    # Generation speed is measured by bench/generator_figures.py, not asserted here.
    df = synth.generate(seed=0)
    assert len(df) == 90_000


# --------------------------------------------------------------------------------------------
# Realism: correlated answers and country differences
# --------------------------------------------------------------------------------------------
def test_socio_economic_answers_are_correlated(table: pd.DataFrame) -> None:
    num = table[NUMERICAL].astype(float)
    num["savings"] = table["savings"].astype(int)
    corr = num.corr(method="spearman")
    assert corr.loc["education", "income_scale"] > 0.25
    assert corr.loc["education", "education_mother"] > 0.25
    assert corr.loc["income_scale", "subjective_social_class"] < -0.25  # class 1 = upper
    assert corr.loc["income_scale", "savings"] < -0.4  # savings 1 = saved money
    married = table["marital_status"].isin(["1", "2"])
    assert (table.loc[~married, "education_spouse"] == 0).all()
    assert (table.loc[married, "education_spouse"] > 0).all()


def test_age_drives_family_answers(table: pd.DataFrame) -> None:
    youngest = table["generation"] == 4
    oldest = table["generation"] <= 1
    single = table["marital_status"] == "6"
    assert single[youngest].mean() > 3 * single[oldest].mean()
    with_parents = table["lives_with_parents"] != "1"
    assert with_parents[youngest].mean() > 2 * with_parents[oldest].mean()
    assert table.loc[oldest, "children_number"].mean() > table.loc[youngest, "children_number"].mean()


def test_migration_answers_are_consistent(table: pd.DataFrame) -> None:
    imm = table["immigrant"] == "2"
    born_abroad = table["birth_country"] == "1"
    assert born_abroad[imm].mean() > 0.9
    assert born_abroad[~imm].mean() < 0.05
    assert (table.loc[imm, "citizenship"] == "2").mean() > 5 * (table.loc[~imm, "citizenship"] == "2").mean()


def test_later_countries_differ_in_distributions(table: pd.DataFrame) -> None:
    later = _codes(table) >= 500
    for col in ["mode", "religion"]:
        p = table.loc[~later, col].value_counts(normalize=True)
        q = table.loc[later, col].value_counts(normalize=True)
        total_variation = 0.5 * p.sub(q, fill_value=0).abs().sum()
        assert total_variation > 0.2, col
    assert table.loc[later, "education"].mean() < table.loc[~later, "education"].mean()


# --------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------
def test_same_seed_same_table() -> None:
    pd.testing.assert_frame_equal(synth.generate(seed=5, rows=5_000), synth.generate(seed=5, rows=5_000))


def test_different_seed_different_table() -> None:
    a, b = synth.generate(seed=5, rows=5_000), synth.generate(seed=6, rows=5_000)
    assert list(a.columns) == list(b.columns)
    assert not a.equals(b)
    assert (a[FEATURES] != b[FEATURES]).to_numpy().mean() > 0.2


def test_subject_ids_are_seeded_uuid4() -> None:
    a = synth.subject_ids(np.random.default_rng(9), 1_000)
    b = synth.subject_ids(np.random.default_rng(9), 1_000)
    assert (a == b).all()
    assert len(set(a)) == 1_000
    assert all(UUID4_RE.match(x) for x in a)


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------
def _all_frames(s: synth.Splits) -> list[pd.DataFrame]:
    return list(s.frames().values())


def test_splits_are_disjoint_and_cover_every_row(table: pd.DataFrame, splits: synth.Splits) -> None:
    frames = _all_frames(splits)
    ids = pd.concat([f[SUBJECT_ID] for f in frames], ignore_index=True)
    assert ids.is_unique
    assert len(ids) == len(table)
    # the same rows, not just the same count
    back = pd.concat([f[TABLE_COLUMNS] for f in frames], ignore_index=True)
    key = TABLE_COLUMNS
    pd.testing.assert_frame_equal(
        back.sort_values(key).reset_index(drop=True), table.sort_values(key).reset_index(drop=True)
    )


def test_split_frames_are_valid_contract_tables(splits: synth.Splits) -> None:
    for name, frame in splits.frames().items():
        assert list(frame.columns) == [*TABLE_COLUMNS, SUBJECT_ID], name
        assert frame.index.equals(pd.RangeIndex(len(frame))), name
        pd.testing.assert_frame_equal(contract.validate_table(frame), frame)
        assert frame[SUBJECT_ID].map(lambda x: bool(UUID4_RE.match(x))).all(), name


def test_initial_and_later_rows_go_to_their_frames(table: pd.DataFrame, splits: synth.Splits) -> None:
    for frame in (splits.train, splits.holdout, splits.initial_pool):
        assert (_codes(frame) < 500).all()
    for frame in (*splits.field, splits.later_eval, splits.later_pool):
        assert (_codes(frame) >= 500).all()
    n_initial = int((_codes(table) < 500).sum())
    assert len(splits.holdout) / n_initial == pytest.approx(0.15, abs=0.01)
    assert len(splits.initial_pool) / n_initial == pytest.approx(0.15, abs=0.01)
    # every initial country is in train and holdout (stratified by country and label)
    initial_countries = set(table.loc[_codes(table) < 500, COUNTRY])
    assert set(splits.train[COUNTRY]) == initial_countries
    assert set(splits.holdout[COUNTRY]) == initial_countries
    initial_rate = table.loc[_codes(table) < 500, LABEL].mean()
    assert splits.holdout[LABEL].mean() == pytest.approx(initial_rate, abs=0.01)


def test_field_chunks_partition_the_later_countries(table: pd.DataFrame, splits: synth.Splits) -> None:
    later = table[_codes(table) >= 500]
    later_countries = set(later[COUNTRY])
    chunk_countries = [set(f[COUNTRY]) for f in splits.field]
    assert len(splits.field) == 3
    assert all(chunk_countries)
    assert set().union(*chunk_countries) == later_countries
    assert sum(len(c) for c in chunk_countries) == len(later_countries)  # no country in two chunks
    # each chunk holds half of its countries' rows; later_eval 15% of every later country
    for frame, countries in zip(splits.field, chunk_countries, strict=True):
        share = len(frame) / later[COUNTRY].isin(countries).sum()
        assert share == pytest.approx(0.5, abs=0.02)
    assert set(splits.later_eval[COUNTRY]) == later_countries
    assert len(splits.later_eval) / len(later) == pytest.approx(0.15, abs=0.01)
    assert len(splits.later_pool) / len(later) == pytest.approx(0.35, abs=0.01)


def test_splits_are_deterministic(table: pd.DataFrame, splits: synth.Splits) -> None:
    again = synth.split_source(table, seed=42)
    for (name, a), b in zip(splits.frames().items(), _all_frames(again), strict=True):
        pd.testing.assert_frame_equal(a, b, obj=name)
    other = synth.split_source(table, seed=43)
    assert not other.train[SUBJECT_ID].equals(splits.train[SUBJECT_ID])


def test_existing_subject_ids_are_kept(table: pd.DataFrame) -> None:
    with_ids = table.assign(**{SUBJECT_ID: [f"00000000-0000-4000-8000-{i:012d}" for i in range(len(table))]})
    s = synth.split_source(with_ids, seed=1)
    ids = pd.concat([f[SUBJECT_ID] for f in _all_frames(s)])
    assert set(ids) == set(with_ids[SUBJECT_ID])
    row = s.holdout.iloc[0]
    original = with_ids.set_index(SUBJECT_ID).loc[row[SUBJECT_ID]]
    assert original[FEATURES].tolist() == row[FEATURES].tolist()


def test_split_rejects_unusable_tables(table: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="later countries"):
        synth.split_source(table[_codes(table) < 500], seed=1)
    with pytest.raises(ValueError, match="field chunks"):
        synth.split_source(table, seed=1, field_chunks=40)
    dup = table.assign(**{SUBJECT_ID: "00000000-0000-4000-8000-000000000000"})
    with pytest.raises(ValueError, match="duplicate"):
        synth.split_source(dup, seed=1)
    with pytest.raises(contract.ContractError):
        synth.split_source(table.drop(columns=LABEL), seed=1)


def test_save_and_load_round_trip(splits: synth.Splits, tmp_path: Path) -> None:
    paths = synth.save_splits(splits, tmp_path)
    names = {p.name for p in paths}
    assert names == {
        "train.parquet", "holdout.parquet", "initial_pool.parquet", "field_0.parquet",
        "field_1.parquet", "field_2.parquet", "later_eval.parquet", "later_pool.parquet",
    }  # fmt: skip
    loaded = synth.load_splits(tmp_path)
    for (name, a), b in zip(splits.frames().items(), _all_frames(loaded), strict=True):
        pd.testing.assert_frame_equal(a, b, obj=name)
    (tmp_path / "holdout.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="holdout"):
        synth.load_splits(tmp_path)


# --------------------------------------------------------------------------------------------
# The point of the generator: poor transfer to the later countries, recovery with their labels
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_initial_model_transfers_poorly_and_recovers_with_field_labels() -> None:
    f = synth.transfer_figures(synth.split_source(synth.generate(seed=42, rows=30_000), seed=42))
    a, b, c = f.initial, f.later, f.retrained_later
    assert 0.72 <= a <= 0.84, f"(a) initial holdout AUC {a:.3f}"
    assert a - b >= 0.12, f"(b) later AUC {b:.3f} is not far enough below (a) {a:.3f}"
    assert abs(c - a) <= 0.04, f"(c) retrained later AUC {c:.3f} vs (a) {a:.3f}"
    # a table without the later regime would fail the gap: the later rows must really differ
    assert f.initial_pool - b >= 0.12
