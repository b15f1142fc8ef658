"""The ``poleng`` command line: thin typer adapters over the core modules.

Heavy libraries (MLflow, XGBoost, Evidently) are imported inside the commands that need them, so
``--help``, ``status`` and validation start fast. User mistakes print one red line and exit 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from poleng.settings import Settings

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Political-engagement scoring: drift-monitored batches, self-healing XGBoost, MLflow registry.",
)
data_app = typer.Typer(no_args_is_help=True, help="Generate or check survey tables.")
app.add_typer(data_app, name="data")


def _mount_stack() -> None:
    from poleng.cli_stack import stack_app

    app.add_typer(stack_app, name="stack", help="Start, stop and inspect the native service stack.")


_mount_stack()
# Wide tables when output is piped or captured (CI logs, Mage) instead of rich's 80-column default.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 180)
err_console = Console(stderr=True, soft_wrap=True)


def _settings() -> Settings:
    return Settings()


def _fail(message: str, code: int = 1) -> None:
    err_console.print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
@data_app.command("generate")
def data_generate(
    out: Path = typer.Argument(..., help="Output file (.parquet or .csv)."),
    seed: int = typer.Option(42, help="Random seed."),
    rows: int = typer.Option(90_000, help="Number of rows."),
    countries: int = typer.Option(64, help="Number of countries (codes >= 500 arrive later)."),
) -> None:
    """Write a synthetic survey table that follows the data contract."""
    from poleng import scoring, synth

    df = synth.generate(seed=seed, rows=rows, countries=countries)
    scoring.write_table(df, out)
    later = (df["country"].astype(int) >= 500).sum()
    console.print(f"wrote {len(df):,} rows x {df.shape[1]} columns to {out} "
                  f"({df['country'].nunique()} countries, {later:,} later-country rows, "
                  f"label rate {df['political_engagement'].mean():.3f})")


@data_app.command("validate")
def data_validate(
    path: Path = typer.Argument(..., help="A survey table (.parquet or .csv)."),
    batch: bool = typer.Option(False, "--batch", help="Check it as a scoring batch (subject_id, no label)."),
) -> None:
    """Check a table against the contract without writing anything."""
    from poleng import contract

    if batch:
        result = contract.validate_batch(contract.read_table(path), source=path.name)
        console.print(f"{path.name}: {len(result.valid):,} valid rows, {len(result.rejected):,} rejected")
        if len(result.rejected):
            console.print(result.rejected["reason"].value_counts().head(10).to_string())
    else:
        df = contract.load_table(path)
        console.print(f"{path.name}: valid, {len(df):,} rows, label rate {df['political_engagement'].mean():.3f}")


# ----------------------------------------------------------------------------------------------
# model lifecycle
# ----------------------------------------------------------------------------------------------
def _print_outcome(outcome: object) -> None:
    from poleng.lifecycle import Outcome, summary_metrics

    assert isinstance(outcome, Outcome)
    r = outcome.result
    console.print(f"trained version [bold]{outcome.version}[/bold] in {r.seconds:.1f} s "
                  f"({r.trials} trials, best iteration {r.best_iteration}), run {r.run_id}")
    console.print(f"  training set {r.training_set.short} ({r.training_set.rows:,} rows)")
    console.print(f"  test split: {summary_metrics(r.metrics)}")
    verdict = "[green]promoted[/green]" if outcome.decision.promoted else "[yellow]rejected[/yellow]"
    console.print(f"  decision on {outcome.eval_rows:,} evaluation rows: {verdict}: {outcome.decision.reason}")
    console.print(f"  champion: v{outcome.champion_before or '-'} -> v{outcome.champion_after or '-'}")


@app.command()
def init() -> None:
    """Load (POLENG_DATA) or generate the data, train, and promote the first champion."""
    from poleng import lifecycle

    s = _settings()
    console.print(f"state: {s.home}   tracking: {s.resolved_tracking_uri}   profile: {s.profile}")
    _print_outcome(lifecycle.init_project(s))


@app.command()
def train() -> None:
    """Train a challenger on the newest training set and apply the promotion rule."""
    from poleng import lifecycle

    _print_outcome(lifecycle.retrain_current(_settings()))


@app.command()
def score(
    src: Path = typer.Argument(..., metavar="IN", help="Table to score (.parquet or .csv)."),
    dst: Path = typer.Argument(..., metavar="OUT", help="Output (.parquet or .csv)."),
) -> None:
    """Score every row of a table with the champion; other columns are kept untouched."""
    from poleng import scoring

    rows, version = scoring.score_file(src, dst, _settings())
    console.print(f"scored {rows:,} rows with champion v{version} -> {dst}")


@app.command()
def models() -> None:
    """List model versions with aliases, metrics and promotion decisions."""
    from poleng import registry

    s = _settings()
    versions = registry.list_versions(s)
    if not versions:
        console.print(f"no versions of {s.model_name!r} yet (run `poleng init`)")
        return
    table = Table(title=f"{s.model_name} @ {s.resolved_tracking_uri}")
    for col in ("version", "aliases", "created (UTC)", "reason", "train rows", "test AUC", "test Brier",
                "decision", "eval AUC (chal / champ)", "why"):
        table.add_column(col)
    for v in versions:
        t = v.tags
        auc = v.metrics.get("test_roc_auc")
        brier = v.metrics.get("test_brier")
        table.add_row(
            v.version,
            ", ".join(v.aliases),
            v.created.strftime("%Y-%m-%d %H:%M"),
            t.get("reason", ""),
            t.get("train_rows", ""),
            f"{auc:.4f}" if auc is not None else "",
            f"{brier:.4f}" if brier is not None else "",
            t.get("decision", "") + (" (rolled back)" if "rolled_back_at" in t else ""),
            f"{t.get('decision_challenger_auc', '')[:6]} / {t.get('decision_champion_auc', '')[:6]}",
            t.get("decision_reason", ""),
        )
    console.print(table)


@app.command()
def rollback() -> None:
    """Move the champion alias back to the previous champion."""
    from poleng import registry

    demoted, restored = registry.rollback(_settings())
    console.print(f"champion moved back from v{demoted} to v{restored}")


@app.command()
def reset(yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")) -> None:
    """Delete all state (data splits, datasets, ledger, embedded MLflow store, outputs)."""
    from poleng import lifecycle

    s = _settings()
    if not yes and not typer.confirm(f"Delete everything under {s.home} (except the native stack's stack/)?"):
        raise typer.Exit(1)
    # The native stack's own data (PostgreSQL, S3, logs) has its own lifecycle: `poleng stack down`.
    removed = lifecycle.reset(s, keep=(s.home / "stack",))
    console.print(f"reset {s.home}: removed {len(removed)} entries")


@app.command()
def ui(port: int = typer.Option(5000, help="Port for the MLflow UI."),
       host: str = typer.Option("127.0.0.1", help="Interface to bind.")) -> None:
    """Serve the MLflow UI over the embedded store (Ctrl-C to stop)."""
    import subprocess

    s = _settings()
    if not s.is_embedded:
        console.print(f"tracking is a server already: open {s.resolved_tracking_uri}")
        return
    console.print(f"MLflow UI on http://{host}:{port} over {s.resolved_tracking_uri}")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", s.resolved_tracking_uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    raise typer.Exit(subprocess.call(cmd))


# ----------------------------------------------------------------------------------------------
# batch flow
# ----------------------------------------------------------------------------------------------
def _result_table(title: str, rows: list[object]) -> Table:
    from poleng.flow import BatchResult

    table = Table(title=title, show_lines=False)
    for col in ("file", "rows", "valid", "status", "drift (top columns)", "action", "model", "contacts",
                "reason"):
        table.add_column(col, overflow="fold")
    for r in rows:
        assert isinstance(r, BatchResult)
        drift = "" if r.drift is None else r.drift_summary
        table.add_row(
            r.file_name, str(r.rows_received or ""), str(r.rows_valid or ""), r.status, drift, r.action,
            f"v{r.model_version}" if r.model_version else "", str(r.contacts) if r.status == "scored" else "",
            (r.reason or "") if r.status != "scored" else (r.reason or ""),
        )
    return table


@app.command()
def process() -> None:
    """Process every batch waiting in the inbox once (what a scheduler calls)."""
    from poleng import flow

    s = _settings()
    results = flow.process_inbox(s, progress=True)
    if not results:
        console.print(f"nothing waiting in {s.inbox}")
        return
    console.print(_result_table(f"processed {len(results)} file(s)", results))


@app.command()
def simulate(name: str = typer.Argument(..., help="Scenario name (see `poleng scenarios`).")) -> None:
    """Stage a scenario's batches and field data, run the loop, and show what happened per batch."""
    from poleng import scenarios

    s = _settings()
    console.print(f"scenario [bold]{name}[/bold]   state: {s.home}   tracking: {s.resolved_tracking_uri}")
    report = scenarios.simulate(name, s, progress=True)
    console.print(_result_table(f"scenario {report.scenario}", report.results))
    for o in report.outcomes:
        if o.step.kind == "field":
            console.print(f"staged labelled field data: {o.file}")
        r = o.result
        if r is not None and r.retrain:
            rt = r.retrain
            verdict = "promoted" if rt["promoted"] else "rejected"
            console.print(f"{r.file_name}: retrained v{rt['version']} on {rt['train_rows']:,} rows "
                          f"(+{rt['field_rows']:,} field rows): {verdict}: {rt['reason']}")
    if report.later_auc_before is not None:
        after = f"{report.later_auc_after:.4f}" if report.later_auc_after is not None else "-"
        console.print(f"champion v{report.champion_before} -> v{report.champion_after}; "
                      f"AUC on later countries {report.later_auc_before:.4f} -> {after}")
    console.print(f"finished in {report.seconds:.1f} s")
    console.print(f"reports: {s.reports}   contacts: {s.contacts}   quarantine: {s.quarantine}")
    console.print("look at runs and models: `poleng ui` then http://127.0.0.1:5000 ; ledger: `poleng status`")


@app.command("scenarios")
def list_scenarios() -> None:
    """List the scenarios in scenarios/ with their descriptions."""
    from poleng import scenarios

    table = Table(title="scenarios")
    table.add_column("name")
    table.add_column("batches")
    table.add_column("description", overflow="fold")
    for name in scenarios.available():
        sc = scenarios.load(name)
        table.add_row(name, str(len(sc.batches)), " ".join(sc.description.split()))
    console.print(table)


@app.command()
def status(limit: int = typer.Option(30, help="Rows to show.")) -> None:
    """Show the ledger: one row per batch, newest first."""
    from poleng.ledger import Ledger

    s = _settings()
    ledger = Ledger(s.resolved_ledger_url)
    try:
        records = ledger.list(limit)
        counts = ledger.counts()
    finally:
        ledger.close()
    table = Table(title=f"ledger {s.resolved_ledger_url}  " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    for col in ("batch", "file", "status", "received", "valid", "rejected", "contacts", "drift", "action", "model",
                "reason / alert"):
        table.add_column(col, overflow="fold")
    for r in records:
        table.add_row(
            r.batch_id[:12], r.file_name, str(r.status), str(r.rows_received or ""), str(r.rows_valid or ""),
            str(r.rows_rejected or ""), str(r.contacts if r.contacts is not None else ""),
            "" if r.drift is None else ("yes" if r.drift else "no"), r.action or "",
            f"v{r.model_version}" if r.model_version else "", r.quarantine_reason or (r.error or "")[:120],
        )
    console.print(table)


# ----------------------------------------------------------------------------------------------
# entry point with user-facing error handling
# ----------------------------------------------------------------------------------------------
def _user_errors() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from poleng.contract import ContractError
    from poleng.lifecycle import LifecycleError
    from poleng.registry import RegistryError
    from poleng.scenarios import ScenarioError
    from poleng.scoring import NoChampionError

    return (ContractError, LifecycleError, RegistryError, NoChampionError, ValidationError, FileNotFoundError,
            ScenarioError)


def main(argv: list[str] | None = None) -> None:  # noqa: UP007 - typer 0.9 needs Optional
    try:
        app(args=argv, standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(1)
    except Exception as exc:  # user mistakes: one line, no traceback; anything else re-raised
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, _user_errors()):
            err_console.print(f"[bold red]error:[/bold red] {_one_line(exc)}", highlight=False, soft_wrap=True)
            sys.exit(1)
        if type(exc).__name__ == "MlflowException":  # a tracking server that cannot be reached, say
            err_console.print(f"[bold red]MLflow error:[/bold red] {_one_line(exc)[:600]}", highlight=False,
                              soft_wrap=True)
            sys.exit(2)
        raise


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return " ".join(line.strip() for line in text) if text else type(exc).__name__
