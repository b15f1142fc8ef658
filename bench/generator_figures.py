"""Measure the generator's headline figures on the default data (seed 42, 90k rows, 64 countries).

(a) AUC on held-out initial-study rows of an XGBoost model trained on initial-study rows only;
(b) the same model's AUC on all later-country rows (should be >= 0.15 lower than a);
(c) AUC on ``later_eval`` after retraining on train + the labelled field chunks (within 0.03 of a).

Also prints the oracle AUC (true logit, including unobserved noise), an upper bound for any model.

    .venv/bin/python bench/generator_figures.py [--seed 42] [--rows 90000] [--countries 64]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.metrics import roc_auc_score

from poleng import synth
from poleng.contract import CATEGORICAL, COUNTRY, FEATURES, LABEL, allowed_string_codes


def to_matrix(df: pd.DataFrame, countries: list[str]) -> pd.DataFrame:
    """Features with string codes as pandas categories over fixed category sets."""
    x = df[FEATURES].copy()
    for col in CATEGORICAL:
        cats = countries if col == COUNTRY else sorted(allowed_string_codes(col), key=int)
        x[col] = pd.Categorical(x[col], categories=cats)
    return x


def fit(train: pd.DataFrame, countries: list[str], seed: int) -> xgb.XGBClassifier:
    """Fixed-parameter XGBoost with early stopping on a random 20% validation split."""
    rng = np.random.default_rng(seed)
    val = rng.random(len(train)) < 0.2
    model = xgb.XGBClassifier(
        n_estimators=400,
        learning_rate=0.05,
        max_depth=5,
        tree_method="hist",
        enable_categorical=True,
        early_stopping_rounds=30,
        eval_metric="logloss",
        n_jobs=2,
        random_state=seed,
    )
    x = to_matrix(train, countries)
    y = train[LABEL].to_numpy()
    model.fit(x[~val], y[~val], eval_set=[(x[val], y[val])], verbose=False)
    return model


def auc(model: xgb.XGBClassifier, df: pd.DataFrame, countries: list[str]) -> float:
    return float(roc_auc_score(df[LABEL], model.predict_proba(to_matrix(df, countries))[:, 1]))


def figures(seed: int, rows: int, countries: int) -> dict[str, float]:
    """Generate, split, train twice; return figures and timings."""
    t0 = time.perf_counter()
    df, logit = synth._generate(seed, rows, countries)
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    splits = synth.split_source(df, seed=seed)
    t_split = time.perf_counter() - t0
    cats = sorted(df[COUNTRY].unique(), key=int)
    late = df[COUNTRY].astype(int).to_numpy() >= 500
    later_all = pd.concat([*splits.field, splits.later_eval, splits.later_pool], ignore_index=True)

    t0 = time.perf_counter()
    first = fit(splits.train, cats, seed)
    t_fit1 = time.perf_counter() - t0
    a = auc(first, splits.holdout, cats)
    b = auc(first, later_all, cats)
    b_eval = auc(first, splits.later_eval, cats)
    t0 = time.perf_counter()
    second = fit(pd.concat([splits.train, *splits.field], ignore_index=True), cats, seed)
    t_fit2 = time.perf_counter() - t0
    c = auc(second, splits.later_eval, cats)
    c_hold = auc(second, splits.holdout, cats)
    y = df[LABEL].to_numpy()
    return {
        "a": a,
        "b": b,
        "b_eval": b_eval,
        "c": c,
        "c_holdout": c_hold,
        "oracle_initial": float(roc_auc_score(y[~late], logit[~late])),
        "oracle_later": float(roc_auc_score(y[late], logit[late])),
        "label_rate": float(y.mean()),
        "rounds_1": float(first.best_iteration + 1),
        "rounds_2": float(second.best_iteration + 1),
        "t_generate": t_gen,
        "t_split": t_split,
        "t_fit_1": t_fit1,
        "t_fit_2": t_fit2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rows", type=int, default=90_000)
    parser.add_argument("--countries", type=int, default=64)
    args = parser.parse_args()
    f = figures(args.seed, args.rows, args.countries)
    print(f"seed={args.seed} rows={args.rows} countries={args.countries} label rate={f['label_rate']:.3f}")
    print(f"{'figure':<58}{'AUC':>8}  target")
    rows = [
        ("(a) initial model on initial holdout", f["a"], "0.77-0.82"),
        ("(b) initial model on all later-country rows", f["b"], f"<= {f['a'] - 0.15:.3f} (a - 0.15)"),
        ("    ... on later_eval only", f["b_eval"], ""),
        ("(c) retrained (train + field) on later_eval", f["c"], f"{f['a'] - 0.03:.3f}-{f['a'] + 0.03:.3f}"),
        ("    retrained model on initial holdout", f["c_holdout"], ""),
        ("oracle (true logit) initial / later", f["oracle_initial"], f"later {f['oracle_later']:.4f}"),
    ]
    for name, value, target in rows:
        print(f"{name:<58}{value:>8.4f}  {target}")
    print(f"gap a-b = {f['a'] - f['b']:.4f}; |c-a| = {abs(f['c'] - f['a']):.4f}")
    print(
        f"timings: generate {f['t_generate']:.2f}s, split {f['t_split']:.2f}s, "
        f"fit 1 {f['t_fit_1']:.1f}s ({f['rounds_1']:.0f} rounds), "
        f"fit 2 {f['t_fit_2']:.1f}s ({f['rounds_2']:.0f} rounds)"
    )


if __name__ == "__main__":
    main()
