"""Benchmark the batch flow (issue: batch flow): per-batch latency by step, scoring throughput, and
the wall time of `poleng simulate full_simulation` in a fresh state directory.

    .venv/bin/python bench/batch_flow.py [--home STATE_AFTER_INIT] [--skip-simulation]

Targets (2 cores): champion scoring >= 200k rows/s; drift check on a 20k-row batch < 3 s; a
100k-row clean batch end to end < 10 s; full_simulation after install < 3 min.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _settings(home: Path):  # noqa: ANN202
    from poleng.settings import Settings

    return Settings(_env_file=None, home=home, tracking_uri=None, ledger_url=None, data=None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, default=None, help="an initialised state dir (default: init one)")
    ap.add_argument("--skip-simulation", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from poleng import contract, drift, flow, lifecycle, scenarios, scoring
    from poleng.ledger import Ledger

    home = args.home or Path(tempfile.mkdtemp(prefix="poleng-bench-flow-")) / "state"
    s = _settings(home)
    if not (home / "mlflow.db").exists():
        print(f"initialising {home} (90k generated rows, quick profile) ...", flush=True)
        lifecycle.init_project(s, progress=False)
    splits = lifecycle.prepare_source(s)
    # A new seed each run: identical batches on a reused state would (rightly) be duplicates.
    pools = scenarios._Pools(splits, seed=time.time_ns() % 2**32)

    def batch(rows: int) -> scenarios.pd.DataFrame:
        return pools.batch(scenarios.Step(kind="batch", rows=rows, mix={"initial_pool": 1.0}))

    champion = scoring.load_champion(s)
    # Warm-up: imports (Evidently, MLflow), the champion's reference cache, one small batch.
    ledger = Ledger(s.resolved_ledger_url)
    ctx = flow._Context(s, ledger, flow.owner_id())
    warm = s.inbox / "warmup.parquet"
    scoring.write_table(batch(3000), warm)
    flow.process_file(warm, ctx)

    print(f"per-batch latency (clean batches from the initial study, champion v{champion.version}, "
          f"median of {args.repeat}):")
    print(f"  {'rows':>7}  {'validate':>9}  {'score':>7}  {'drift':>7}  {'write':>7}  {'total':>7}")
    for rows in (10_000, 100_000):
        runs = []
        for i in range(args.repeat):
            path = s.inbox / f"bench-{rows}-{i}.parquet"
            scoring.write_table(batch(rows), path)
            t0 = time.perf_counter()
            result = flow.process_file(path, ctx)
            total = time.perf_counter() - t0
            assert result.status == "scored" and result.action == "scored", result
            runs.append({**result.durations, "total": total})
        med = {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in runs[0]}
        print(f"  {rows:>7,}  {med['validate']:>8.2f}s  {med['score']:>6.2f}s  {med['drift']:>6.2f}s  "
              f"{med['write']:>6.2f}s  {med['total']:>6.2f}s")
    ledger.close()

    # Drift check alone (verdict, without the HTML report) on a 20k batch.
    frame = contract.validate_batch(batch(20_000)).valid
    scores = champion.score(frame)
    reference = drift.load_or_build_reference(s, champion.version, lambda: (_ for _ in ()).throw(RuntimeError))
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        drift.check_drift(reference, frame, scores, s, "bench")
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    verdict, evidence = drift.check_drift(reference, frame, scores, s, "bench-report")
    drift.write_reports(verdict, evidence, s, "bench-report")
    report_s = time.perf_counter() - t0
    print(f"drift check on 20,000 rows: verdict {sorted(times)[len(times) // 2]:.2f} s (median), "
          f"with the Evidently HTML report {report_s:.2f} s")

    # Scoring throughput of the champion (feature encoding included).
    big = contract.validate_batch(batch(100_000)).valid
    champion.score(big)
    times = []
    for _ in range(max(args.repeat, 5)):
        t0 = time.perf_counter()
        champion.score(big)
        times.append(time.perf_counter() - t0)
    best, med = min(times), sorted(times)[len(times) // 2]
    print(f"champion scoring: {len(big) / med:,.0f} rows/s median ({len(big) / best:,.0f} best) on 100,000 rows")

    if not args.skip_simulation:
        sim_home = Path(tempfile.mkdtemp(prefix="poleng-bench-sim-")) / "state"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("POLENG_", "MLFLOW_"))}
        env["POLENG_HOME"] = str(sim_home)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "poleng", "simulate", "full_simulation"], env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        status = "ok" if proc.returncode == 0 else f"FAILED rc={proc.returncode}"
        print(f"`poleng simulate full_simulation` in a fresh state (init included): {wall:.1f} s ({status})")
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
    print(f"state kept in {home}")


if __name__ == "__main__":
    main()
