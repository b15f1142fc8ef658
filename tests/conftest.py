"""Shared pytest fixtures.

* ``make_settings(home, **overrides)``: test-sized settings (small generated table, few trials), isolated
  from the developer's ``.env`` and ``MLFLOW_TRACKING_URI``.
* ``initialized_home`` (session): one state directory where ``init`` trained and promoted a first
  champion; ``fresh_state`` copies it so each test starts from the same initialised system.
* ``pg_url`` (session): a real PostgreSQL (tests/pg.py).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

# Make the repository root importable so `tests.pg` resolves however pytest is started.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from poleng.settings import Settings  # noqa: E402
from tests.pg import pg_url  # noqa: E402, F401

# Test-sized system: ~30k generated rows, 3 Hyperopt trials, a lower drift minimum to match.
TEST_SETTINGS: dict[str, object] = {
    "rows": 30_000,
    "trials": 3,
    "max_boost_rounds": 300,
    "tracking_uri": None,
    "ledger_url": None,
    "data": None,
    "seed": 42,
}


def make_settings(home: Path, **overrides: object) -> Settings:
    return Settings(_env_file=None, home=home, **{**TEST_SETTINGS, **overrides})  # type: ignore[call-arg]


def subprocess_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a `poleng` subprocess that reproduces ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POLENG_", "MLFLOW_"))}
    env.update(
        POLENG_HOME=str(settings.home),
        POLENG_ROWS=str(settings.rows),
        POLENG_TRIALS=str(settings.n_trials),
        POLENG_MAX_BOOST_ROUNDS=str(settings.max_boost_rounds),
        POLENG_SEED=str(settings.seed),
    )
    if settings.ledger_url:
        env["POLENG_LEDGER_URL"] = settings.ledger_url
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def initialized_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state directory after `init`: source splits, first training set, champion v1."""
    from poleng import lifecycle

    home = tmp_path_factory.mktemp("initialized") / "state"
    lifecycle.init_project(make_settings(home), progress=False)
    return home


@pytest.fixture
def fresh_state(initialized_home: Path, tmp_path: Path) -> Settings:
    """A private copy of the initialised state (the MLflow store and artifacts included)."""
    from poleng import scoring, tracking

    home = tmp_path / "state"
    shutil.copytree(initialized_home, home)
    scoring.clear_cache()
    tracking.reset_cache()
    return make_settings(home)
