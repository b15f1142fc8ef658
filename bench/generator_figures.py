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

from sklearn.metrics import roc_auc_score

from poleng import synth
from poleng.contract import COUNTRY, LABEL


def figures(seed: int, rows: int, countries: int) -> dict[str, float]:
    """Generate, split, train twice; return figures and timings."""
    t0 = time.perf_counter()
    df, logit = synth._generate(seed, rows, countries)
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    splits = synth.split_source(df, seed=seed)
    t_split = time.perf_counter() - t0
    t0 = time.perf_counter()
    f = synth.transfer_figures(splits, seed=seed)
    t_fits = time.perf_counter() - t0
    late = df[COUNTRY].astype(int).to_numpy() >= 500
    y = df[LABEL].to_numpy()
    return {
        "a": f.initial,
        "b": f.later,
        "b_eval": f.later_eval,
        "c": f.retrained_later,
        "c_holdout": f.retrained_initial,
        "oracle_initial": float(roc_auc_score(y[~late], logit[~late])),
        "oracle_later": float(roc_auc_score(y[late], logit[late])),
        "label_rate": float(y.mean()),
        "rounds_1": float(f.rounds[0]),
        "rounds_2": float(f.rounds[1]),
        "t_generate": t_gen,
        "t_split": t_split,
        "t_fits": t_fits,
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
        f"two fits {f['t_fits']:.1f}s ({f['rounds_1']:.0f} and {f['rounds_2']:.0f} rounds)"
    )


if __name__ == "__main__":
    main()
