"""Synthetic survey tables shaped like the real WVS-7 derived table, and deterministic splits.

``generate`` makes a labelled table with exactly the contract's columns. Answers are correlated
through per-person latent variables (socio-economic status, age, urbanity, migration background,
political interest) and shifted per country. The label (1 = politically disengaged) follows a
country-dependent logistic model: the initial-study countries (code < ``later_code``) share one
regime, the later field countries another, with reversed and different feature effects, so a model
trained on the initial study transfers poorly to the later countries until it sees their labels.

``split_source`` cuts any validated contract table (generated or real) into the frames the
project works with: training rows, a frozen holdout, scoring pools and labelled field chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from poleng import contract
from poleng.contract import COUNTRY, FEATURES, INTEGER_CODES, LABEL, STRING_CODES, SUBJECT_ID, TABLE_COLUMNS

# --------------------------------------------------------------------------------------------
# Countries
# --------------------------------------------------------------------------------------------
# Real ISO 3166-1 numeric codes in order of preference: first the 64 countries of the real
# table's shape (37 below 500, 27 at or above), then further real codes for other counts.
_WVS_INITIAL = (
    20, 32, 36, 50, 51, 68, 76, 104, 124, 152, 156, 158, 170, 196, 203, 218, 231, 276, 300, 320,
    344, 360, 364, 368, 392, 398, 400, 404, 410, 417, 422, 434, 446, 458, 462, 484, 496,
)  # fmt: skip
_WVS_LATER = (
    504, 528, 554, 558, 566, 586, 604, 608, 630, 642, 643, 688, 702, 703, 704, 716, 762, 764,
    788, 792, 804, 818, 826, 840, 858, 860, 862,
)  # fmt: skip
_EXTRA_CODES = (
    4, 8, 12, 24, 31, 40, 56, 64, 70, 72, 84, 96, 100, 108, 112, 116, 120, 132, 140, 144, 148,
    174, 178, 180, 188, 191, 192, 204, 208, 212, 214, 222, 226, 232, 233, 242, 246, 250, 262,
    266, 268, 270, 288, 296, 308, 324, 328, 332, 340, 348, 352, 356, 372, 376, 380, 384, 388,
    408, 414, 418, 426, 428, 430, 438, 440, 442, 450, 454, 466, 470, 478, 480, 492, 498, 499,
    44, 48, 52, 90, 28, 60, 92, 136, 234, 254, 258, 292, 304, 312, 316, 474, 175,
    508, 512, 516, 520, 524, 540, 548, 562, 578, 583, 584, 585, 591, 598, 600, 616, 620, 624,
    626, 634, 646, 659, 662, 670, 674, 678, 682, 686, 690, 694, 705, 706, 710, 724, 728, 729,
    740, 748, 752, 756, 760, 768, 776, 780, 784, 795, 798, 800, 807, 834, 854, 882, 887, 894,
    500, 531, 533, 570, 580, 612, 638, 652, 654, 660, 663, 666, 732, 744, 772, 796, 831, 832,
    833, 850, 876,
)  # fmt: skip
_CODE_PREFERENCE: tuple[int, ...] = (*_WVS_INITIAL, *_WVS_LATER, *_EXTRA_CODES)

# Shape of the real table: 37 of 64 countries and ~59% of rows belong to the initial study.
INITIAL_COUNTRY_SHARE = 37 / 64
INITIAL_ROW_SHARE = 0.59
# Target label rates (1 = disengaged) in the two groups; overall about 1 in 3.
_RATE_INITIAL = 0.32
_RATE_LATER = 0.355
# Label effects in the later countries (the initial study's are written out in ``_generate``):
# education and age turn around, political interest matters less, and employment in government,
# religion, family situation and settlement size matter instead.
# Effects of the ten religion codes (fixed, so figures vary little between seeds).
_RELIGION_INITIAL = np.array([0.1, -0.2, 0.25, -0.1, 0.0, 0.15, -0.15, 0.05, 0.2, -0.1])
_RELIGION_LATER = np.array([-0.3, 0.1, 0.0, 0.2, 0.8, -0.8, 0.5, -0.2, 0.1, -0.5])
_LATER_EFFECTS: dict[str, float] = {
    "intercept_scale": 1.4,  # country intercepts vary more than in the initial study
    "education": 0.25,
    "age": 0.3,
    "respint": 0.45,
    "interest": -0.6,
    "income": -0.15,
    "religion": 1.3,  # scale of _RELIGION_LATER
    "government": -1.3,
    "settlement": -0.15,
    "children": 0.6,
    "with_parents": 0.9,
    "single": 0.7,
    "employment": 1.0,  # scale of the later employment effects
}

_STR = np.array([str(i) for i in range(1000)], dtype=object)


def country_codes(countries: int, later_code: int = 500) -> tuple[list[int], list[int]]:
    """Return (initial, later) ISO numeric codes for a table of ``countries`` countries.

    The split keeps the real table's proportion (37 of 64 initial); both lists are sorted.
    Raises ``ValueError`` if there are too few real codes on either side of ``later_code``.
    """
    if countries < 2:
        raise ValueError(f"countries must be at least 2, got {countries}")
    n_initial = min(countries - 1, max(1, round(countries * INITIAL_COUNTRY_SHARE)))
    n_later = countries - n_initial
    initial = [c for c in _CODE_PREFERENCE if c < later_code][:n_initial]
    later = [c for c in _CODE_PREFERENCE if c >= later_code][:n_later]
    if len(initial) < n_initial or len(later) < n_later:
        raise ValueError(
            f"not enough ISO codes for {n_initial} initial (< {later_code}) and {n_later} later countries"
        )
    return sorted(initial), sorted(later)


def _allocate(weights: np.ndarray, total: int) -> np.ndarray:
    """Integers proportional to ``weights`` summing to ``total`` (largest remainder), each >= 1."""
    raw = weights / weights.sum() * total
    out = np.maximum(np.floor(raw).astype(np.int64), 1)
    rest = total - int(out.sum())
    order = np.argsort(-(raw - np.floor(raw)), kind="stable")
    i = 0
    while rest != 0:
        j = order[i % len(order)]
        if rest > 0:
            out[j] += 1
            rest -= 1
        elif out[j] > 1:
            out[j] -= 1
            rest += 1
        i += 1
    return out


# --------------------------------------------------------------------------------------------
# Vectorised sampling helpers
# --------------------------------------------------------------------------------------------
def _ordinal(latent: np.ndarray, cuts: list[float] | np.ndarray, lo: int) -> np.ndarray:
    """Cut a continuous latent at ``cuts``: codes ``lo .. lo + len(cuts)``."""
    return np.searchsorted(np.asarray(cuts, dtype=float), latent).astype(np.int64) + lo


def _gumbel_choice(rng: np.random.Generator, scores: np.ndarray, lo: int) -> np.ndarray:
    """One multinomial-logit draw per row of ``scores`` (n, k): codes ``lo .. lo + k - 1``."""
    return np.argmax(scores + rng.gumbel(size=scores.shape), axis=1).astype(np.int64) + lo


def _row_choice(rng: np.random.Generator, probs: np.ndarray, lo: int) -> np.ndarray:
    """One categorical draw per row from row-wise probabilities ``probs`` (n, k)."""
    cum = np.cumsum(probs, axis=1)
    cum /= cum[:, -1:]
    u = rng.random(len(probs))[:, None]
    return np.minimum((u > cum).sum(axis=1), probs.shape[1] - 1).astype(np.int64) + lo


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _offset_for_rate(logit: np.ndarray, rate: float) -> float:
    """Constant to add to ``logit`` so that the mean probability equals ``rate`` (bisection)."""
    lo, hi = -10.0, 10.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if _sigmoid(logit + mid).mean() < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _country_dirichlet(
    rng: np.random.Generator, n: int, k: int, dominant_choices: np.ndarray, base: float, boost: float
) -> np.ndarray:
    """Per-country category distributions (n, k): Dirichlet with one dominant category each."""
    alpha = np.full((n, k), base)
    alpha[np.arange(n), rng.choice(dominant_choices, size=n)] += boost
    return rng.gamma(alpha) + 1e-9


# --------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------
def _generate(
    seed: int, rows: int = 90_000, countries: int = 64, later_code: int = 500
) -> tuple[pd.DataFrame, np.ndarray]:
    """Generate the table and return it with the true per-row logit (including latent noise)."""
    if rows < 10 * countries:
        raise ValueError(f"rows ({rows}) must be at least 10 per country ({countries} countries)")
    rng = np.random.default_rng(seed)
    initial_codes, later_codes = country_codes(countries, later_code)
    codes = np.array([*initial_codes, *later_codes])
    n_c = len(codes)
    late_c = np.arange(n_c) >= len(initial_codes)
    lf = late_c.astype(float)

    # --- country sizes: uneven (500-2500 before scaling), ~59% of rows in the initial study
    weights = rng.uniform(500, 2500, n_c)
    n_init_rows = int(round(rows * INITIAL_ROW_SHARE))
    sizes = np.concatenate(
        [_allocate(weights[~late_c], n_init_rows), _allocate(weights[late_c], rows - n_init_rows)]
    )
    ci = np.repeat(np.arange(n_c), sizes)
    n = rows
    late = late_c[ci]
    lr = late.astype(float)

    # --- country-level parameters (later countries differ in their distributions too)
    ses_mu = rng.normal(0, 0.45, n_c) - 0.35 * lf
    age_mu = rng.normal(47, 4, n_c) - 5 * lf
    age_sd = rng.uniform(14, 18, n_c)
    urban_mu = rng.normal(0, 0.5, n_c) - 0.3 * lf
    edu_shift = rng.normal(0, 0.35, n_c) + 0.1 * lf
    fert = rng.normal(0, 0.2, n_c) + 0.25 * lf
    cohabit = rng.normal(0, 0.6, n_c)
    imm_rate = np.where(late_c, rng.beta(1.0, 22, n_c), rng.beta(1.3, 12, n_c))
    privacy_p = rng.beta(9, 2, n_c)
    gov_share = rng.normal(0, 0.4, n_c) + 0.3 * lf
    lwp_shift = rng.normal(0, 0.5, n_c) + 0.4 * lf
    mode_p = np.where(
        late_c[:, None],
        _country_dirichlet(rng, n_c, 6, np.array([3, 4, 5]), 0.15, 6.0),
        _country_dirichlet(rng, n_c, 6, np.array([0, 1, 2]), 0.15, 6.0),
    )
    religion_p = np.where(
        late_c[:, None],
        _country_dirichlet(rng, n_c, 10, np.array([0, 4, 5, 6, 9]), 0.25, 5.0),
        _country_dirichlet(rng, n_c, 10, np.array([0, 1, 2, 3, 8]), 0.25, 5.0),
    )

    # --- demographics and latent traits
    female = rng.random(n) < 0.52
    fem = female.astype(float)
    age = np.clip(age_mu[ci] + age_sd[ci] * rng.standard_normal(n), 18, 90)
    age_s = (age - 45) / 16
    a1 = (age - 18) / 10
    generation = 4 - _ordinal(age, [30, 45, 60, 75], 0)  # 0 oldest cohort .. 4 youngest
    ses = ses_mu[ci] - 0.15 * age_s + rng.standard_normal(n)
    urb = urban_mu[ci] + 0.35 * ses + 0.9 * rng.standard_normal(n)
    interest = rng.standard_normal(n)  # political interest, seen only through respint

    settlement = _ordinal(-urb, [-1.0, -0.3, 0.3, 1.0], 1)  # 1 capital .. 5 village
    edu_lat = ses + edu_shift[ci] - 0.3 * age_s + 0.25 * urb + 0.6 * rng.standard_normal(n)
    education = _ordinal(edu_lat, [-2.2, -1.5, -0.9, -0.35, 0.15, 0.65, 1.2, 1.8], 1)
    edu_s = (education - 5) / 2
    education_mother = _ordinal(
        0.55 * ses + 0.5 * edu_shift[ci] - 0.45 * age_s + 0.8 * rng.standard_normal(n), [-0.2, 0.9], 1
    )

    # marital status: 1 married, 2 together, 3 divorced, 4 separated, 5 widowed, 6 single
    mar_scores = np.column_stack(
        [
            0.2 + 0.7 * a1 - 0.08 * a1**2,
            -0.8 + 0.4 * a1 - 0.08 * a1**2 + cohabit[ci],
            -2.6 + 0.8 * a1 - 0.08 * a1**2,
            -3.4 + 0.6 * a1 - 0.06 * a1**2,
            -6.5 + 1.1 * a1 + 0.6 * fem,
            1.8 - 0.9 * a1,
        ]
    )
    marital = _gumbel_choice(rng, mar_scores, 1)
    spouse = marital <= 2
    sp = spouse.astype(float)
    single = marital == 6

    children_number = np.minimum(
        rng.poisson(np.exp(-1.4 + fert[ci] + 0.9 * sp + 0.35 * np.minimum(a1, 3) - 0.15 * edu_lat)), 4
    )
    p_lwp = _sigmoid(1.0 - 1.3 * a1 + 1.2 * single - 0.2 * ses + lwp_shift[ci])
    lwp_kind = _row_choice(
        rng, np.column_stack([0.75 - 0.45 * sp, 0.05 + 0.4 * sp, np.full(n, 0.07)]), 2
    )  # 2 parents, 3 parents-in-law, 4 both
    lives_with_parents = np.where(rng.random(n) < p_lwp, lwp_kind, 1)
    household_size = np.clip(
        1
        + sp
        + children_number
        + (lives_with_parents > 1) * (1 + (lives_with_parents == 4))
        + rng.poisson(0.15 + 0.3 * np.maximum(fert[ci], 0), n),
        1,
        5,
    )

    # employment: 1 full time, 2 part time, 3 self-employed, 4 retired, 5 housewife, 6 student,
    # 7 unemployed
    emp_scores = np.column_stack(
        [
            1.3 + 0.5 * ses - 0.6 * fem,
            -0.4 + 0.6 * fem,
            -0.5 - 0.3 * urb + 0.3 * lr,
            -3.0 + 1.4 * np.clip((age - 52) / 5, 0, None),
            -1.2 + 2.2 * fem * sp - 0.4 * ses - 3.0 * (1 - fem) + 0.4 * lr,
            3.2 - 1.6 * np.clip(age - 18, 0, None) / 2.5 + 0.4 * ses,
            -1.4 - 0.5 * ses + 0.5 * lr,
        ]
    )
    employment = _gumbel_choice(rng, emp_scores, 1)
    working = employment <= 3
    ever_worked = working | (employment == 4) | (employment == 7)

    spouse_ses = 0.6 * ses + 0.8 * rng.standard_normal(n)
    emp_sp_scores = np.column_stack(
        [
            1.3 + 0.4 * spouse_ses - 0.6 * (1 - fem),
            -0.4 + 0.6 * (1 - fem),
            -0.5 - 0.3 * urb,
            -3.0 + 1.4 * np.clip((age - 52) / 5, 0, None),
            -1.0 + 2.0 * (1 - fem) - 0.3 * spouse_ses,
            np.full(n, -4.0),
            -1.5 - 0.5 * spouse_ses,
            np.full(n, -3.0),
        ]
    )
    employment_spouse = np.where(spouse, _gumbel_choice(rng, emp_sp_scores, 1), 0)
    education_spouse = np.where(
        spouse, _ordinal(0.7 * edu_lat + 0.3 * spouse_ses + 0.6 * rng.standard_normal(n), [-0.7, 0.6], 1), 0
    )

    # professions 1-12: never had a job, professional, higher admin, clerical, sales, service,
    # skilled, semi-skilled, unskilled, farm worker, farm owner, armed forces
    prof_load = np.array([-0.6, 1.6, 1.3, 0.7, 0.2, 0.0, -0.2, -0.6, -1.0, -1.2, -0.3, 0.0])
    prof_base = np.array([-1.5, -0.8, -1.2, 0.2, 0.2, 0.3, 0.3, 0.0, -0.2, -1.2, -1.4, -2.8])
    rural = (settlement >= 4).astype(float)
    prof_scores = prof_base + np.outer(ses, prof_load)
    prof_scores[:, 0] += 4.0 * (~ever_worked & (age < 30)) + 1.5 * (employment == 5)
    prof_scores[:, 9] += 1.3 * rural
    prof_scores[:, 10] += 1.3 * rural
    profession = _gumbel_choice(rng, prof_scores, 1)
    profession_spouse = np.where(
        spouse, _gumbel_choice(rng, prof_base + np.outer(spouse_ses, prof_load), 1), 0
    )
    father_ses = 0.5 * ses + 0.85 * rng.standard_normal(n)
    pf_scores = prof_base + np.outer(father_ses, prof_load)
    pf_scores[:, 0] -= 1.0
    pf_scores[:, 9:11] += (0.8 + 0.5 * (age_s > 0))[:, None] + 0.6 * lr[:, None]
    profession_father = _gumbel_choice(rng, pf_scores, 1)

    sec_scores = np.column_stack(
        [gov_share[ci] + 0.3 * edu_s, np.full(n, 0.9), np.full(n, -1.6) + 0.2 * edu_s]
    )
    employment_sector = np.where(ever_worked, _gumbel_choice(rng, sec_scores, 1), 0)
    chief_earner = np.where(
        rng.random(n)
        < _sigmoid(
            -0.2
            + 1.4 * working
            + 0.6 * (1 - fem)
            - 1.4 * (lives_with_parents > 1)
            - 0.6 * fem * sp
            + 0.5 * (employment == 4)
        ),
        1,
        2,
    )
    inc_lat = 0.8 * ses + 0.35 * working + 0.7 * rng.standard_normal(n)
    savings = _ordinal(-inc_lat, [-0.7, 0.3, 0.9], 1)  # 1 saved .. 4 borrowed
    income_scale = _ordinal(inc_lat, [-0.6, 0.7], 1)
    subjective_social_class = _ordinal(
        -(0.8 * ses + 0.2 * inc_lat + 0.45 * rng.standard_normal(n)), [-1.6, -0.6, 0.4, 1.3], 1
    )  # 1 upper .. 5 lower
    religion = _row_choice(rng, religion_p[ci], 1)
    mode = _row_choice(rng, mode_p[ci], 1)
    intprivacy = np.where(rng.random(n) < privacy_p[ci], 1, 2)
    sex = np.where(female, 2, 1)

    # migration background
    imm = rng.random(n) < imm_rate[ci]
    immigrant = np.where(imm, 2, 1)
    mother_imm = np.where(imm, rng.random(n) < 0.85, rng.random(n) < 0.04)
    father_imm = np.where(mother_imm, rng.random(n) < 0.8, rng.random(n) < 0.05)
    immigrant_mother = np.where(mother_imm, 2, 1)
    immigrant_father = np.where(father_imm, 2, 1)
    birth_country = np.where(imm, rng.random(n) < 0.96, rng.random(n) < 0.01).astype(np.int64)
    birth_country_mother = np.where(mother_imm, rng.random(n) < 0.95, rng.random(n) < 0.02).astype(np.int64)
    birth_country_father = np.where(father_imm, rng.random(n) < 0.95, rng.random(n) < 0.02).astype(np.int64)
    citizen = np.where(imm, rng.random(n) < 0.55, rng.random(n) < 0.995)
    citizenship = np.where(citizen, 1, 2)

    # respondent's interest during the interview (1 very .. 3 not interested)
    respint = _ordinal(-(0.75 * interest + 0.2 * edu_s + 0.65 * rng.standard_normal(n)), [-0.45, 0.9], 1)

    # --- label: country-dependent logistic model, different regime in the later countries
    b0 = rng.normal(0, 0.4, n_c) * np.where(late_c, _LATER_EFFECTS["intercept_scale"], 1.0)
    s_edu = rng.normal(0, 0.12, n_c)
    s_age = rng.normal(0, 0.12, n_c)
    s_resp = rng.normal(0, 0.1, n_c)
    emp_init = np.array([0.0, 0.1, -0.05, -0.15, 0.3, -0.3, 0.35])
    emp_late = np.array([0.0, -0.15, 0.5, 0.6, -0.45, 0.7, -0.3])
    noncit = (citizenship == 2).astype(float)
    inc_s = income_scale - 2.0
    ssc_s = 3.0 - subjective_social_class

    shared = b0[ci] + 0.6 * noncit + 0.15 * imm + 0.15 * fem
    logit_init = (
        shared
        + (-0.45 + s_edu[ci]) * edu_s
        + (-0.35 + s_age[ci]) * age_s
        + (0.45 + s_resp[ci]) * (respint - 2)
        - 0.7 * interest
        - 0.2 * inc_s
        - 0.15 * ssc_s
        + 0.12 * (savings - 2.5)
        + 0.15 * fem * (edu_s < 0)
        + emp_init[employment - 1]
        + _RELIGION_INITIAL[religion - 1]
        + 0.1 * (settlement - 3)
    )
    eff = _LATER_EFFECTS
    logit_late = (
        shared
        + (eff["education"] + s_edu[ci]) * edu_s
        + (eff["age"] + s_age[ci]) * age_s
        + (eff["respint"] + s_resp[ci]) * (respint - 2)
        + eff["interest"] * interest
        + eff["income"] * inc_s
        + eff["religion"] * _RELIGION_LATER[religion - 1]
        + eff["government"] * (employment_sector == 1)
        + eff["settlement"] * (settlement - 3)
        + eff["children"] * (children_number - 1.5)
        + eff["with_parents"] * (lives_with_parents > 1)
        + eff["single"] * (marital == 6)
        + eff["employment"] * emp_late[employment - 1]
    )
    logit = np.where(late, logit_late, logit_init)
    logit[~late] += _offset_for_rate(logit[~late], _RATE_INITIAL)
    if late.any():
        logit[late] += _offset_for_rate(logit[late], _RATE_LATER)
    label = (rng.random(n) < _sigmoid(logit)).astype(np.int64)

    values: dict[str, np.ndarray] = {
        COUNTRY: _STR[codes[ci]],
        "mode": mode,
        "settlement": settlement,
        "respint": respint,
        "intprivacy": intprivacy,
        "sex": sex,
        "immigrant": immigrant,
        "immigrant_mother": immigrant_mother,
        "immigrant_father": immigrant_father,
        "birth_country": birth_country,
        "birth_country_mother": birth_country_mother,
        "birth_country_father": birth_country_father,
        "citizenship": citizenship,
        "household_size": household_size,
        "lives_with_parents": lives_with_parents,
        "marital_status": marital,
        "children_number": children_number,
        "education": education,
        "education_spouse": education_spouse,
        "education_mother": education_mother,
        "employment": employment,
        "employment_spouse": employment_spouse,
        "profession": profession,
        "profession_spouse": profession_spouse,
        "profession_father": profession_father,
        "employment_sector": employment_sector,
        "chief_earner": chief_earner,
        "savings": savings,
        "subjective_social_class": subjective_social_class,
        "income_scale": income_scale,
        "religion": religion,
        "generation": generation,
    }
    columns: dict[str, np.ndarray] = {}
    for col in FEATURES:
        v = values[col]
        if col == COUNTRY:
            columns[col] = v
        elif col in STRING_CODES:
            columns[col] = _STR[np.asarray(v, dtype=np.int64)]
        else:
            columns[col] = np.asarray(v, dtype=np.int64)
    columns[LABEL] = label
    df = pd.DataFrame(columns, columns=TABLE_COLUMNS)
    return df, logit


def generate(seed: int, rows: int = 90_000, countries: int = 64, later_code: int = 500) -> pd.DataFrame:
    """Generate a labelled synthetic survey table with the contract's columns and dtypes.

    Deterministic for a given ``seed``. Rows are grouped by country (ascending code), like the
    real table. Country codes are real ISO 3166-1 numeric codes as unpadded strings; about 37/64 of
    the countries and 59% of the rows have codes below ``later_code`` (the initial study).
    """
    return _generate(seed, rows, countries, later_code)[0]


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------
@dataclass
class Splits:
    """The frames one source table is cut into. All are labelled and carry ``subject_id``."""

    train: pd.DataFrame  # initial-study rows the first model trains on
    holdout: pd.DataFrame  # frozen initial-study evaluation rows, never trained on
    initial_pool: pd.DataFrame  # initial-study rows reserved for scoring batches
    field: list[pd.DataFrame]  # labelled later-country chunks, one per group of later countries
    later_eval: pd.DataFrame  # labelled later-country rows never trained on
    later_pool: pd.DataFrame  # later-country rows reserved for scoring batches

    def frames(self) -> dict[str, pd.DataFrame]:
        """Every frame by its file stem (``train``, ``field_0``, ...)."""
        out = {"train": self.train, "holdout": self.holdout, "initial_pool": self.initial_pool}
        out.update({f"field_{i}": f for i, f in enumerate(self.field)})
        out.update({"later_eval": self.later_eval, "later_pool": self.later_pool})
        return out


def subject_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` UUID4 strings drawn from ``rng`` (deterministic for a seeded generator)."""
    raw = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4, as uuid.UUID(bytes=..., version=4) sets
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.tobytes().hex()
    hexes = (h[i : i + 32] for i in range(0, 32 * n, 32))
    return np.array([f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}" for x in hexes], dtype=object)


def _within_group_fraction(rng: np.random.Generator, keys: pd.DataFrame) -> np.ndarray:
    """For each row a position in (0, 1] inside its group (rows of ``keys`` equal), in random order."""
    frame = keys.copy()
    frame["_r"] = rng.random(len(frame))
    grouped = frame.groupby(list(keys.columns), sort=False)["_r"]
    return (grouped.rank(method="first") / grouped.transform("size")).to_numpy()


def split_source(
    df: pd.DataFrame,
    *,
    seed: int,
    later_code: int = 500,
    holdout_share: float = 0.15,
    pool_share: float = 0.15,
    field_chunks: int = 3,
    field_label_share: float = 0.5,
    later_eval_share: float = 0.15,
) -> Splits:
    """Cut a labelled contract table into deterministic, disjoint frames.

    Initial-study rows (country code < ``later_code``) are split per (country, label) into
    ``holdout_share`` holdout, ``pool_share`` scoring pool and the rest for training. The later
    countries are shuffled (by ``seed``) into ``field_chunks`` groups; of every later country,
    ``later_eval_share`` of its rows go to ``later_eval``, ``field_label_share`` to the field chunk
    of its group and the rest to ``later_pool`` (again per country and label).

    Every frame has the contract's columns plus ``subject_id`` (kept from the input if present,
    otherwise UUID4 strings drawn from ``seed``); rows are in a seeded random order.
    """
    if not (holdout_share > 0 and pool_share > 0 and holdout_share + pool_share < 1):
        raise ValueError("holdout_share and pool_share must be positive and sum to less than 1")
    if not (later_eval_share > 0 and field_label_share > 0 and later_eval_share + field_label_share < 1):
        raise ValueError("later_eval_share and field_label_share must be positive and sum to less than 1")
    if field_chunks < 1:
        raise ValueError(f"field_chunks must be at least 1, got {field_chunks}")
    table = contract.validate_table(df, source="split_source").reset_index(drop=True)
    if SUBJECT_ID in table.columns:
        ids = table[SUBJECT_ID]
        if ids.isna().any() or ids.duplicated().any():
            raise ValueError("split_source: subject_id has missing or duplicate values")
        table[SUBJECT_ID] = ids.astype(str).astype(object)
    else:
        table[SUBJECT_ID] = subject_ids(np.random.default_rng([seed, 1]), len(table))
    table = table[[*TABLE_COLUMNS, SUBJECT_ID]]

    rng = np.random.default_rng([seed, 0])
    code = table[COUNTRY].astype(int).to_numpy()
    is_later = code >= later_code
    if not (~is_later).any():
        raise ValueError(f"split_source: no initial-study rows (country code < {later_code})")
    later_countries = np.unique(code[is_later])
    if len(later_countries) < field_chunks:
        raise ValueError(
            f"split_source: {len(later_countries)} later countries (code >= {later_code}) "
            f"cannot form {field_chunks} field chunks"
        )

    frac = _within_group_fraction(rng, table[[COUNTRY, LABEL]])
    part = np.empty(len(table), dtype=object)
    part[~is_later] = np.where(
        frac[~is_later] <= holdout_share,
        "holdout",
        np.where(frac[~is_later] <= holdout_share + pool_share, "initial_pool", "train"),
    )
    groups = np.array_split(rng.permutation(later_countries), field_chunks)
    group_of = np.full(int(code.max()) + 1, -1)
    for g, members in enumerate(groups):
        group_of[members] = g
    later_group = group_of[code]
    f_late = frac[is_later]
    part[is_later] = np.where(
        f_late <= later_eval_share,
        "later_eval",
        np.where(
            f_late <= later_eval_share + field_label_share,
            np.char.add("field_", later_group[is_later].astype(str)).astype(object),
            "later_pool",
        ),
    )

    order = rng.permutation(len(table))
    shuffled = table.iloc[order]
    part_sorted = part[order]

    def take(name: str) -> pd.DataFrame:
        return shuffled[part_sorted == name].reset_index(drop=True)

    return Splits(
        train=take("train"),
        holdout=take("holdout"),
        initial_pool=take("initial_pool"),
        field=[take(f"field_{g}") for g in range(field_chunks)],
        later_eval=take("later_eval"),
        later_pool=take("later_pool"),
    )


def save_splits(splits: Splits, directory: Path | str) -> list[Path]:
    """Write every frame of ``splits`` as ``<name>.parquet`` into ``directory``; return the paths.

    Stale ``field_*.parquet`` files from an earlier save with more chunks are removed.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("field_*.parquet"):
        old.unlink()
    paths = []
    for name, frame in splits.frames().items():
        path = directory / f"{name}.parquet"
        frame.to_parquet(path, index=False)
        paths.append(path)
    return paths


def _read_frame(path: Path) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    for col in frame.columns:
        if col in STRING_CODES or col in (COUNTRY, SUBJECT_ID):
            frame[col] = frame[col].astype(object)
        elif col in INTEGER_CODES or col == LABEL:
            frame[col] = frame[col].astype("int64")
    return frame


def load_splits(directory: Path | str) -> Splits:
    """Read the frames written by ``save_splits``. Raises ``FileNotFoundError`` if one is missing."""
    directory = Path(directory)
    names = ["train", "holdout", "initial_pool", "later_eval", "later_pool"]
    missing = [n for n in names if not (directory / f"{n}.parquet").exists()]
    if missing:
        raise FileNotFoundError(f"{directory}: missing split files {[f'{n}.parquet' for n in missing]}")
    field_paths = sorted(directory.glob("field_*.parquet"), key=lambda p: int(p.stem.split("_")[1]))
    frames = {n: _read_frame(directory / f"{n}.parquet") for n in names}
    return Splits(field=[_read_frame(p) for p in field_paths], **frames)


# --------------------------------------------------------------------------------------------
# The generator's headline figures (used by bench/generator_figures.py and the data tests)
# --------------------------------------------------------------------------------------------
@dataclass
class TransferFigures:
    """ROC AUCs of a fixed-parameter XGBoost: how the initial model transfers, how retraining recovers."""

    initial: float  # (a) trained on `train`, scored on the initial holdout
    later: float  # (b) the same model on every later-country row
    later_eval: float  # the same model on `later_eval` only
    initial_pool: float  # the same model on the initial pool (a second initial-study sample)
    retrained_later: float  # (c) retrained on train + field chunks, scored on `later_eval`
    retrained_initial: float  # the retrained model on the initial holdout
    rounds: tuple[int, int]  # boosting rounds kept by early stopping (first, retrained)


def transfer_figures(splits: Splits, *, seed: int = 0) -> TransferFigures:
    """Fit the fixed-parameter reference model twice and measure the transfer figures.

    The model (learning rate 0.05, depth 5, <= 400 rounds, early stopping on a random 20 % of the
    training rows, native categoricals over fixed category sets) is deliberately not the
    project's tuned pipeline: it measures the *data*, independently of tuning.
    """
    import xgboost as xgb
    from sklearn.metrics import roc_auc_score

    from poleng.contract import CATEGORICAL, FEATURES, allowed_string_codes

    frames = [splits.train, splits.holdout, splits.initial_pool, *splits.field, splits.later_eval,
              splits.later_pool]
    countries = sorted(set().union(*(set(f[COUNTRY]) for f in frames)), key=int)

    def matrix(df: pd.DataFrame) -> pd.DataFrame:
        x = df[FEATURES].copy()
        for col in CATEGORICAL:
            cats = countries if col == COUNTRY else sorted(allowed_string_codes(col), key=int)
            x[col] = pd.Categorical(x[col], categories=cats)
        return x

    def fit(train: pd.DataFrame) -> xgb.XGBClassifier:
        val = np.random.default_rng(seed).random(len(train)) < 0.2
        model = xgb.XGBClassifier(
            n_estimators=400, learning_rate=0.05, max_depth=5, tree_method="hist", enable_categorical=True,
            early_stopping_rounds=30, eval_metric="logloss", n_jobs=2, random_state=seed,
        )
        x, y = matrix(train), train[LABEL].to_numpy()
        model.fit(x[~val], y[~val], eval_set=[(x[val], y[val])], verbose=False)
        return model

    def auc(model: xgb.XGBClassifier, df: pd.DataFrame) -> float:
        return float(roc_auc_score(df[LABEL], model.predict_proba(matrix(df))[:, 1]))

    later_all = pd.concat([*splits.field, splits.later_eval, splits.later_pool], ignore_index=True)
    first = fit(splits.train)
    second = fit(pd.concat([splits.train, *splits.field], ignore_index=True))
    return TransferFigures(
        initial=auc(first, splits.holdout),
        later=auc(first, later_all),
        later_eval=auc(first, splits.later_eval),
        initial_pool=auc(first, splits.initial_pool),
        retrained_later=auc(second, splits.later_eval),
        retrained_initial=auc(second, splits.holdout),
        rounds=(int(first.best_iteration) + 1, int(second.best_iteration) + 1),
    )
