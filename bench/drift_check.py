"""Time the drift check: import, reference build, and checks of 20k and 100k-row batches.

Usage: ``.venv/bin/python bench/drift_check.py [--repeat 3] [--source-rows 42000]``

Synthetic survey data with country-specific code distributions: the reference is drawn from
initial-study countries (< 500) and sampled to ``settings.drift_reference_rows``; batches are
drawn from the same countries ("same") and from later countries ("later", which should drift).
Prints seconds per step; the check itself excludes imports (measured separately, first).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from poleng import contract  # noqa: E402
from poleng.settings import Settings  # noqa: E402

EARLY = [str(c) for c in range(4, 500, 13)][:37]
LATER = [str(c) for c in range(504, 1000, 18)][:27]


def survey(n: int, countries: list[str], seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """``n`` contract-valid rows from ``countries``, codes drawn per country, plus model-like scores."""
    rng = np.random.default_rng(seed)
    country = rng.choice(countries, size=n)
    data: dict[str, object] = {"country": country}
    idx = pd.Series(country).map({c: i for i, c in enumerate(countries)}).to_numpy()
    for j, col in enumerate(contract.FEATURES[1:]):
        lo, hi = contract.STRING_CODES.get(col) or contract.INTEGER_CODES[col]
        k = hi - lo + 1
        # per-country probabilities, derived from the country code so they are stable across calls
        probs = np.stack([np.random.default_rng([int(c), j]).dirichlet(np.full(k, 2.0)) for c in countries])
        u = rng.random(n)[:, None]
        codes = lo + (u > np.cumsum(probs[idx], axis=1)).sum(axis=1).clip(0, k - 1)
        data[col] = (
            codes.astype(str).astype(object) if col in contract.STRING_CODES else codes.astype("int64")
        )
    frame = pd.DataFrame(data)[contract.FEATURES]
    logit = 0.4 * (frame["education"] - 5) - 0.3 * (frame["income_scale"] - 2) + rng.normal(0, 1, n)
    return frame, 1 / (1 + np.exp(logit - 0.7))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--source-rows", type=int, default=42_000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    args = parser.parse_args()

    t0 = time.perf_counter()
    import evidently  # noqa: F401

    print(f"import evidently: {time.perf_counter() - t0:.2f} s")
    t0 = time.perf_counter()
    from poleng import drift

    print(f"import poleng.drift: {time.perf_counter() - t0:.2f} s")

    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home))
        features, scores = survey(args.source_rows, EARLY, seed=1)
        importances = {c: float(i) for i, c in enumerate(reversed(contract.FEATURES), start=1)}
        t0 = time.perf_counter()
        reference = drift.load_or_build_reference(settings, "1", lambda: (features, scores, importances))
        print(
            f"reference build+cache ({args.source_rows} -> {len(reference.frame)} rows): "
            f"{time.perf_counter() - t0:.2f} s"
        )
        t0 = time.perf_counter()
        drift.load_or_build_reference(settings, "1", lambda: (features, scores, importances))
        print(f"reference load from cache: {time.perf_counter() - t0:.2f} s")

        warm, warm_scores = survey(2_000, EARLY, seed=99)
        t0 = time.perf_counter()
        drift.check_drift(reference, warm, warm_scores, settings, "warm-up")
        print(f"first check (2k rows, includes lazy imports): {time.perf_counter() - t0:.2f} s")

        for n in args.sizes:
            for name, countries in (("same", EARLY), ("later", LATER)):
                batch, batch_scores = survey(n, countries, seed=n + len(name))
                times = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    verdict, snapshot = drift.check_drift(reference, batch, batch_scores, settings, f"b{n}")
                    times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                drift.write_reports(verdict, snapshot, settings, f"{name}-{n}")
                t_write = time.perf_counter() - t0
                print(
                    f"check {n:>7} rows ({name:5}): median {statistics.median(times):.2f} s "
                    f"(min {min(times):.2f}, max {max(times):.2f}); write_reports {t_write:.2f} s; "
                    f"{verdict.summary()}"
                )


if __name__ == "__main__":
    main()
