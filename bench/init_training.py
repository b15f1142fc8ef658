"""Benchmark `poleng init` (issue: core engine): wall time, seconds per Hyperopt trial, peak RSS, AUC.

Runs the real command in a fresh state directory on the embedded default (generated data, 90k rows
unless --rows), then reads the figures back from the MLflow store it wrote. Prints a table.

    .venv/bin/python bench/init_training.py [--rows 90000] [--profile quick] [--data real.parquet]

Targets (2 cores): `init` on the quick profile under 60 s; held-out initial-study AUC >= 0.77.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=90_000)
    ap.add_argument("--profile", default="quick", choices=["quick", "full"])
    ap.add_argument("--data", type=Path, default=None, help="a real survey table instead of generated data")
    ap.add_argument("--home", type=Path, default=None, help="state dir (default: a temporary one)")
    args = ap.parse_args()

    home = args.home or Path(tempfile.mkdtemp(prefix="poleng-bench-init-")) / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POLENG_", "MLFLOW_"))}
    env |= {"POLENG_HOME": str(home), "POLENG_ROWS": str(args.rows), "POLENG_PROFILE": args.profile}
    if args.data:
        env["POLENG_DATA"] = str(args.data.resolve())
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "poleng", "init"], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"init failed:\n{proc.stderr[-3000:]}")
    peak_rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    from mlflow import MlflowClient
    from poleng import registry
    from poleng.settings import Settings

    s = Settings(_env_file=None, home=home, tracking_uri=None, data=args.data, rows=args.rows)
    (v1,) = registry.list_versions(s)
    client = MlflowClient(s.resolved_tracking_uri)
    run = client.get_run(v1.run_id)
    trials = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{v1.run_id}'")
    trial_s = sorted(t.data.metrics["fit_seconds"] for t in trials)
    median = trial_s[len(trial_s) // 2]
    rows = [
        ("init wall time (process, imports included)", f"{wall:.1f} s"),
        ("training job (tuning + refit + logging)", f"{run.data.metrics['training_seconds']:.1f} s"),
        ("Hyperopt trials", f"{len(trial_s)}"),
        ("seconds per trial fit (min / median / max)", f"{trial_s[0]:.2f} / {median:.2f} / {trial_s[-1]:.2f}"),
        ("training rows", run.data.params["train_rows"]),
        ("peak RSS of the init process", f"{peak_rss_mib:.0f} MiB"),
        ("ROC AUC on held-out initial-study rows", v1.tags["decision_challenger_auc"][:6]),
        ("ROC AUC on the test split", f"{v1.metrics['test_roc_auc']:.4f}"),
        ("Brier on the test split", f"{v1.metrics['test_brier']:.4f}"),
    ]
    from poleng import lifecycle

    rows.append(("ROC AUC on later countries (never trained on)", f"{lifecycle.later_country_auc(s, '1'):.4f}"))
    width = max(len(k) for k, _ in rows)
    source = args.data or "generated"
    print(f"poleng init, profile={args.profile}, rows={args.rows}, data={source}, cores={os.cpu_count()}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    print(f"state kept in {home}")


if __name__ == "__main__":
    main()
