"""The survey record contract (see docs/data_contract.md): columns, codes, reading and validation.

Two strictness levels share one column specification:

* ``validate_table`` for data we train on: any problem raises ``ContractError`` with a one-line
  message naming the column and sample bad values; nothing is written.
* ``validate_batch`` for scoring batches: whole-batch problems raise ``BatchRejected`` with a
  machine-readable reason; row problems drop those rows into a rejected frame with a reason each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa

LABEL = "political_engagement"
SUBJECT_ID = "subject_id"
COUNTRY = "country"

# column -> allowed codes. String codes are stored as strings ("1", "2", ...).
STRING_CODES: dict[str, tuple[int, int]] = {
    "mode": (1, 6),
    "settlement": (1, 5),
    "intprivacy": (1, 2),
    "sex": (1, 2),
    "immigrant": (1, 2),
    "immigrant_mother": (1, 2),
    "immigrant_father": (1, 2),
    "birth_country": (0, 1),
    "birth_country_mother": (0, 1),
    "birth_country_father": (0, 1),
    "citizenship": (1, 2),
    "lives_with_parents": (1, 4),
    "marital_status": (1, 6),
    "employment": (1, 7),
    "employment_spouse": (0, 8),
    "profession": (1, 12),
    "profession_spouse": (0, 12),
    "profession_father": (1, 12),
    "employment_sector": (0, 3),
    "chief_earner": (1, 2),
    "savings": (1, 4),
    "religion": (1, 10),
}
# Integer (ordinal) columns and their inclusive ranges.
INTEGER_CODES: dict[str, tuple[int, int]] = {
    "respint": (1, 3),
    "household_size": (1, 5),
    "children_number": (0, 4),
    "education": (1, 9),
    "education_spouse": (0, 3),
    "education_mother": (1, 3),
    "subjective_social_class": (1, 5),
    "income_scale": (1, 3),
    "generation": (0, 4),
}
# Feature columns in the contract's order.
FEATURES: list[str] = [
    "country", "mode", "settlement", "respint", "intprivacy", "sex", "immigrant",
    "immigrant_mother", "immigrant_father", "birth_country", "birth_country_mother",
    "birth_country_father", "citizenship", "household_size", "lives_with_parents",
    "marital_status", "children_number", "education", "education_spouse", "education_mother",
    "employment", "employment_spouse", "profession", "profession_spouse", "profession_father",
    "employment_sector", "chief_earner", "savings", "subjective_social_class", "income_scale",
    "religion", "generation",
]  # fmt: skip
CATEGORICAL: list[str] = [c for c in FEATURES if c == COUNTRY or c in STRING_CODES]
NUMERICAL: list[str] = [c for c in FEATURES if c in INTEGER_CODES]
TABLE_COLUMNS: list[str] = [*FEATURES, LABEL]
BATCH_COLUMNS: list[str] = [*FEATURES, SUBJECT_ID]

_COUNTRY_RE = re.compile(r"^\d{1,3}$")
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
SUPPORTED_SUFFIXES = (".parquet", ".csv")
CONTRACT_VERSION = "1"


class ContractError(ValueError):
    """A table breaks the contract. ``str(err)`` is one line naming what and where."""

    def __init__(self, message: str, reason: str = "contract", column: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.column = column


class BatchRejected(ContractError):
    """A whole batch cannot be used; ``reason`` is machine-readable (e.g. ``missing_columns``)."""


def _sample(values: pd.Series | list, n: int = 5) -> str:
    uniq = pd.unique(pd.Series(list(values), dtype=object))[:n]
    return "[" + ", ".join(repr(v) for v in uniq) + "]"


def allowed_string_codes(column: str) -> set[str]:
    lo, hi = STRING_CODES[column]
    return {str(i) for i in range(lo, hi + 1)}


def valid_country(values: pd.Series) -> pd.Series:
    """Mask of values that are ISO 3166-1 numeric codes written as strings ("4", "32", "840")."""
    s = values.astype("string")
    ok = s.str.fullmatch(_COUNTRY_RE.pattern).fillna(False).astype(bool)
    num = pd.to_numeric(s.where(ok), errors="coerce")
    return ok & (num >= 1) & (num <= 999)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def read_table(path: Path | str) -> pd.DataFrame:
    """Read a Parquet or CSV file as the contract's types. Raises ``ContractError`` if unreadable.

    CSV is read as text and integer columns converted, so string codes keep their exact spelling.
    Values that do not fit an integer column become a type problem reported by the validators.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise BatchRejected(
            f"{path.name}: unsupported file type {suffix or '(none)'!r}; expected .parquet or .csv",
            reason="wrong_extension",
        )
    try:
        if suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, dtype=str, keep_default_na=True, na_values=[""], on_bad_lines="error")
    except FileNotFoundError:
        raise ContractError(f"{path}: file not found", reason="unreadable") from None
    except Exception as exc:  # any parser failure is a user-facing "unreadable" problem
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BatchRejected(f"{path.name}: cannot read as {suffix[1:]}: {detail}", reason="unreadable") from None
    df.columns = [str(c) for c in df.columns]
    return df


# --------------------------------------------------------------------------------------------
# Type coercion shared by both validators
# --------------------------------------------------------------------------------------------
@dataclass
class _Coerced:
    df: pd.DataFrame
    # column -> mask of rows whose value could not be read as the column's type
    type_errors: dict[str, pd.Series] = field(default_factory=dict)


def _coerce(df: pd.DataFrame, columns: list[str], label: bool) -> _Coerced:
    """Bring columns to canonical dtypes: strings (object) for codes, Int64 for integers.

    Raises ``BatchRejected(wrong_types)`` for a column whose storage type cannot hold the
    contract's values at all (e.g. floats with fractions, strings in a Parquet integer column).
    """
    out = df.copy()
    errors: dict[str, pd.Series] = {}
    int_cols = [*(c for c in columns if c in INTEGER_CODES), *([LABEL] if label else [])]
    for col in [*columns, *([LABEL] if label else [])]:
        s = out[col]
        if col in int_cols:
            if pd.api.types.is_bool_dtype(s):
                raise BatchRejected(f"column {col!r}: expected integers, found booleans", "wrong_types", col)
            if pd.api.types.is_integer_dtype(s):
                out[col] = s.astype("Int64")
                continue
            if pd.api.types.is_float_dtype(s):
                frac = s.notna() & (s != np.floor(s.fillna(0)))
                if frac.any():
                    raise BatchRejected(
                        f"column {col!r}: expected integers, found fractions {_sample(s[frac])}",
                        "wrong_types",
                        col,
                    )
                out[col] = s.astype("Int64")
                continue
            # text: parse strictly
            text = s.astype("string").str.strip()
            num = pd.to_numeric(text, errors="coerce")
            bad = text.notna() & (num.isna() | (num != np.floor(num.fillna(0))))
            if bad.any() and bad.sum() == text.notna().sum():
                raise BatchRejected(
                    f"column {col!r}: expected integers, found {_sample(text[bad])}", "wrong_types", col
                )
            if bad.any():
                errors[col] = bad
            out[col] = num.where(~bad).astype("Float64").round().astype("Int64")
        else:
            if pd.api.types.is_object_dtype(s) or pd.api.types.is_string_dtype(s):
                non_str = s.notna() & ~s.map(lambda v: isinstance(v, str))
                if non_str.any():
                    raise BatchRejected(
                        f"column {col!r}: expected string codes, found non-strings {_sample(s[non_str])}",
                        "wrong_types",
                        col,
                    )
                out[col] = s.astype(object)
            elif isinstance(s.dtype, pd.CategoricalDtype):
                out[col] = s.astype(object)
            else:
                raise BatchRejected(
                    f"column {col!r}: expected string codes like '1', found {s.dtype} values {_sample(s)}",
                    "wrong_types",
                    col,
                )
    return _Coerced(out, errors)


@lru_cache(maxsize=2)
def code_schema(label: bool) -> pa.DataFrameSchema:
    """The contract's value domains as a pandera schema (missing values are checked separately).

    String codes must be one of the contract's codes, integers inside their range, the country an
    ISO 3166-1 numeric code written as a string, the label 0 or 1. Columns arrive already coerced
    to canonical dtypes (``_coerce``), so the schema checks values, not storage types.
    """
    columns: dict[str, pa.Column] = {
        COUNTRY: pa.Column(object, pa.Check(lambda s: valid_country(s), element_wise=False), nullable=True),
    }
    for col in STRING_CODES:
        columns[col] = pa.Column(object, pa.Check.isin(sorted(allowed_string_codes(col))), nullable=True)
    for col, (lo, hi) in INTEGER_CODES.items():
        columns[col] = pa.Column("Int64", pa.Check.in_range(lo, hi), nullable=True)
    if label:
        columns[LABEL] = pa.Column("Int64", pa.Check.isin([0, 1]), nullable=True)
    return pa.DataFrameSchema(columns, strict=False, coerce=False)


def _domain_masks(df: pd.DataFrame, columns: list[str], label: bool) -> dict[str, pd.Series]:
    """column -> mask of non-missing values outside the contract's codes (from the pandera schema)."""
    cols = [*columns, *([LABEL] if label else [])]
    masks = {col: pd.Series(False, index=df.index) for col in cols}
    frame = df[cols].copy()
    for col in cols:
        if col in INTEGER_CODES or col == LABEL:
            frame[col] = frame[col].astype("Int64")
    try:
        code_schema(label).validate(frame, lazy=True)
    except pa.errors.SchemaErrors as err:
        cases = err.failure_cases
        cases = cases[cases["index"].notna() & cases["column"].isin(cols)]
        for col, rows in cases.groupby("column")["index"]:
            masks[str(col)] = df.index.isin(rows.astype(df.index.dtype).to_numpy()) & df[col].notna().to_numpy()
            masks[str(col)] = pd.Series(masks[str(col)], index=df.index)
    return masks


def _describe_range(col: str) -> str:
    if col == COUNTRY:
        return "ISO 3166-1 numeric codes 1-999 as strings"
    if col == LABEL:
        return "0 or 1"
    lo, hi = STRING_CODES.get(col) or INTEGER_CODES[col]
    kind = "string codes" if col in STRING_CODES else "integers"
    return f"{kind} {lo}-{hi}"


# --------------------------------------------------------------------------------------------
# Whole tables (training data, field studies)
# --------------------------------------------------------------------------------------------
def validate_table(df: pd.DataFrame, *, labelled: bool = True, source: str = "table") -> pd.DataFrame:
    """Validate a survey table strictly; return it in canonical dtypes (label as int64).

    Raises ``ContractError`` with a one-line message on the first class of problem found.
    A ``subject_id`` column is allowed and kept; any other extra column is an error.
    """
    expected = TABLE_COLUMNS if labelled else FEATURES
    if df.shape[0] == 0:
        raise ContractError(f"{source}: the table is empty", reason="empty")
    missing = [c for c in expected if c not in df.columns]
    extra = [c for c in df.columns if c not in expected and c != SUBJECT_ID]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing columns {missing}")
        if extra:
            parts.append(f"unexpected columns {extra}")
        raise ContractError(f"{source}: " + "; ".join(parts), reason="columns")
    try:
        coerced = _coerce(df, FEATURES, label=labelled)
    except BatchRejected as exc:
        raise ContractError(f"{source}: {exc}", reason="wrong_types", column=exc.column) from None
    for col, bad in coerced.type_errors.items():
        raise ContractError(
            f"{source}: column {col!r}: {int(bad.sum())} values are not integers, e.g. {_sample(df[col][bad])}",
            reason="wrong_types",
            column=col,
        )
    out = coerced.df
    cols = [*FEATURES, *([LABEL] if labelled else [])]
    for col in cols:
        n_missing = int(out[col].isna().sum())
        if n_missing:
            raise ContractError(f"{source}: column {col!r}: {n_missing} missing values", "missing", col)
    for col, bad in _domain_masks(out, FEATURES, label=labelled).items():
        if bad.any():
            raise ContractError(
                f"{source}: column {col!r}: {int(bad.sum())} values outside {_describe_range(col)}, "
                f"e.g. {_sample(out[col][bad])}",
                reason="unknown_code",
                column=col,
            )
    for col in NUMERICAL:
        out[col] = out[col].astype("int64")
    if labelled:
        out[LABEL] = out[LABEL].astype("int64")
    return out


def load_table(path: Path | str, *, labelled: bool = True) -> pd.DataFrame:
    """Read and strictly validate a survey table file."""
    path = Path(path)
    try:
        df = read_table(path)
    except BatchRejected as exc:
        raise ContractError(str(exc), reason=exc.reason) from None
    return validate_table(df, labelled=labelled, source=path.name)


# --------------------------------------------------------------------------------------------
# Scoring batches
# --------------------------------------------------------------------------------------------
@dataclass
class BatchValidation:
    valid: pd.DataFrame  # rows that passed, canonical dtypes
    rejected: pd.DataFrame  # original rows that failed, plus a `reason` column
    received: int

    @property
    def bad_share(self) -> float:
        return len(self.rejected) / self.received if self.received else 0.0


def validate_batch(df: pd.DataFrame, *, source: str = "batch") -> BatchValidation:
    """Validate a scoring batch: whole-batch problems raise ``BatchRejected``, bad rows are split off."""
    if df.shape[0] == 0:
        raise BatchRejected(f"{source}: the batch has no rows", reason="empty")
    if LABEL in df.columns:
        raise BatchRejected(
            f"{source}: batch carries the label column {LABEL!r}; labelled data belongs in field_studies/",
            reason="label_present",
            column=LABEL,
        )
    missing = [c for c in BATCH_COLUMNS if c not in df.columns]
    if missing:
        raise BatchRejected(f"{source}: missing columns {missing}", reason="missing_columns")
    extra = [c for c in df.columns if c not in BATCH_COLUMNS]
    if extra:
        raise BatchRejected(f"{source}: unexpected columns {extra}", reason="unexpected_columns")
    coerced = _coerce(df, FEATURES, label=False)
    out = coerced.df
    ids = out[SUBJECT_ID]
    if not (pd.api.types.is_object_dtype(ids) or pd.api.types.is_string_dtype(ids)):
        raise BatchRejected(f"{source}: column 'subject_id' must hold UUID strings", "wrong_types", SUBJECT_ID)
    out[SUBJECT_ID] = ids.astype(object)

    reasons = pd.Series("", index=out.index, dtype=object)

    def add(mask: pd.Series, text: str | pd.Series) -> None:
        nonlocal reasons
        mask = mask.fillna(False).astype(bool)
        if not mask.any():
            return
        sep = np.where(reasons[mask] == "", "", ";")
        reasons.loc[mask] = reasons[mask] + sep + (text[mask] if isinstance(text, pd.Series) else text)

    for col in BATCH_COLUMNS:
        add(out[col].isna(), f"missing:{col}")
    for col, bad in coerced.type_errors.items():
        add(bad, "not_integer:" + col + "=" + df[col].astype(str))
    for col, bad in _domain_masks(out, FEATURES, label=False).items():
        add(bad, "unknown_code:" + col + "=" + out[col].astype(str))
    sid = out[SUBJECT_ID].astype("string")
    add(sid.notna() & ~sid.str.fullmatch(_UUID_RE.pattern).fillna(False), "bad_subject_id")
    add(sid.notna() & sid.duplicated(keep=False), "duplicate_subject_id")

    bad_rows = reasons != ""
    rejected = df.loc[bad_rows].copy()
    rejected["reason"] = reasons[bad_rows]
    valid = out.loc[~bad_rows].copy()
    for col in NUMERICAL:
        valid[col] = valid[col].astype("int64")
    return BatchValidation(valid=valid.reset_index(drop=True), rejected=rejected, received=len(df))


def scoring_features(df: pd.DataFrame, *, source: str = "table") -> pd.DataFrame:
    """The feature columns of any table, typed for the model, without rejecting rows.

    Missing feature columns or unusable column types raise ``ContractError``; codes the contract or
    the model does not know are kept (the model treats unseen codes as missing).
    """
    if df.shape[0] == 0:
        raise ContractError(f"{source}: the table is empty", reason="empty")
    missing = [c for c in FEATURES if c not in df.columns]
    if missing:
        raise ContractError(f"{source}: missing columns {missing}", reason="missing_columns")
    try:
        coerced = _coerce(df[FEATURES], FEATURES, label=False)
    except BatchRejected as exc:
        raise ContractError(f"{source}: {exc}", reason="wrong_types", column=exc.column) from None
    return coerced.df
