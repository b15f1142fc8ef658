"""`poleng stack ...`: a thin CLI over poleng.stack (mounted into the main CLI by poleng.cli)."""

from __future__ import annotations

import typer

from poleng.settings import Settings

stack_app = typer.Typer(
    help="The native service stack (PostgreSQL, S3, MLflow server, Mage) as local processes.",
    no_args_is_help=True,
)


@stack_app.command()
def up(
    mage: bool = typer.Option(True, "--mage/--no-mage", help="Also start Mage (if mage_pipelines/ exists)."),
    timeout: float = typer.Option(180.0, help="Seconds to wait for each service to become healthy."),
) -> None:
    """Start the stack and wait until every service is healthy."""
    from poleng import stack

    settings = Settings()
    try:
        times = stack.up(settings, with_mage=mage, timeout=timeout, echo=typer.echo)
    except stack.StackError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"started: {times or 'nothing new'}")
    typer.echo(f"MLFLOW_TRACKING_URI={stack.tracking_uri(settings)}")
    typer.echo(f"POLENG_LEDGER_URL={stack.database_url(settings, settings.ledger_db, hide_password=True)}")


@stack_app.command()
def down() -> None:
    """Stop every service of the stack (SIGTERM to each process group, then SIGKILL)."""
    from poleng import stack

    stopped = stack.down(Settings(), echo=typer.echo)
    typer.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@stack_app.command()
def status() -> None:
    """Show each service: state, health, pid, URL and log."""
    from rich.console import Console
    from rich.table import Table

    from poleng import stack

    settings = Settings()
    table = Table("service", "state", "healthy", "pid", "url")
    for s in stack.status(settings):
        healthy = "" if s.healthy is None else ("yes" if s.healthy else "NO")
        table.add_row(s.name, s.state, healthy, str(s.pid or ""), s.url)
    console = Console()
    console.print(table)
    console.print(f"logs: {stack.stack_dir(settings) / 'logs'}", soft_wrap=True)
