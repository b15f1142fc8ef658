"""One native stack (PostgreSQL + SeaweedFS + MLflow server) per test session, on free ports.

The stack lives in a temporary POLENG_HOME; it is torn down at the end of the session and the
teardown fails loudly if any of its processes is left behind.
"""

from __future__ import annotations

import random
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from poleng import stack
from poleng.settings import Settings

# Start-up seconds per service, printed in the terminal summary.
STARTUP: dict[str, float] = {}


@dataclass
class NativeStack:
    """A running native stack and what the tests need to reach it."""

    settings: Settings
    startup: dict[str, float] = field(default_factory=dict)

    @property
    def tracking_uri(self) -> str:
        return stack.tracking_uri(self.settings)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free_s3_port() -> int:
    """A port p with p..p+6 and p+10000..p+10006 free (SeaweedFS's layout, see stack.weed_ports)."""
    rng = random.Random()
    for _ in range(200):
        p = rng.randrange(20_000, 29_000)
        if all(_port_free(q) for base in (p, p + 10_000) for q in range(base, base + 7)):
            return p
    raise RuntimeError("no free port range for SeaweedFS")


def _cached_mlflow_venv(settings: Settings) -> None:
    """Point the stack's MLflow venv at one shared by test sessions (same requirements hash).

    Building it costs 30-110 s here, mostly byte-compiling ~10k files; ``up`` would still build
    it in place if the cache were unusable.
    """
    key = stack._requirements_hash()[:12]
    cache = Path.home() / ".cache" / "poleng-tests" / f"mlflow-server-{key}"
    t0 = time.monotonic()
    stack.ensure_mlflow_venv(Settings(home=cache))
    STARTUP["mlflow venv (cached)"] = round(time.monotonic() - t0, 2)
    link = stack.mlflow_venv(settings)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(stack.mlflow_venv(Settings(home=cache)), target_is_directory=True)


@pytest.fixture(scope="session")
def native_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NativeStack]:
    if shutil.which("uv") is None:
        pytest.skip("uv is needed to build the MLflow server venv (pip install uv)")
    home = tmp_path_factory.mktemp("stack-home")
    settings = Settings(
        home=home,
        stack_bind_host="127.0.0.1",
        stack_pg_url=None,
        pg_port=_free_port(),
        pg_password=secrets.token_hex(16),
        s3_port=_free_s3_port(),
        s3_secret_key=secrets.token_hex(16),
        mlflow_port=_free_port(),
    )
    handle = NativeStack(settings)
    _cached_mlflow_venv(settings)
    try:
        t0 = time.monotonic()
        handle.startup = stack.up(settings, with_mage=False, timeout=240)
        STARTUP.update(handle.startup)
        STARTUP["total"] = round(time.monotonic() - t0, 2)
        yield handle
    finally:
        pids = [s.pid for s in stack.status(settings, probe=False) if s.pid]
        stack.down(settings)
        left = [pid for pid in pids if stack._group_members(pid)]
        assert not left, f"native stack left process groups behind: {left}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if STARTUP:
        terminalreporter.write_sep("-", "native stack start-up (s)")
        for name, seconds in STARTUP.items():
            terminalreporter.write_line(f"{name:>20}: {seconds:6.1f}")
