"""Shared pytest fixtures. Keep small; PostgreSQL lives in tests/pg.py."""

import sys
from pathlib import Path

# Make the repository root importable so `tests.pg` resolves however pytest is started.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.pg import pg_url  # noqa: E402, F401
