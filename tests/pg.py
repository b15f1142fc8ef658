"""A real PostgreSQL for tests: one server per test session, one fresh schema per test.

The server is either the one named by the environment variable ``POLENG_TEST_PG_URL`` (read here
and nowhere else) or a throw-away local server started with PyPI ``pgserver`` (PostgreSQL binaries
in a wheel; as root it runs the server as a system user ``pgserver`` that it creates).

Use from ``tests/conftest.py``::

    from tests.pg import pg_url  # noqa: F401

then ``pg_url`` (session scope) is a ``postgresql+psycopg2://`` URL of a database tests may create
schemas in, and :func:`isolated_schema` gives a test its own empty schema on it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_URL_ENV = "POLENG_TEST_PG_URL"

# Seconds the last pgserver start took (initdb + pg_ctl start), for reporting; None if not started.
startup_seconds: float | None = None


def to_psycopg2_url(uri: str) -> str:
    """Turn ``postgresql://...`` / ``postgres://...`` into a ``postgresql+psycopg2://`` SQLAlchemy URL."""
    url = make_url(uri.replace("postgres://", "postgresql://", 1) if uri.startswith("postgres://") else uri)
    if url.get_backend_name() != "postgresql":
        raise ValueError(f"not a PostgreSQL URL: {uri!r}")
    return url.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


def postgres_url_fixture(name: str = "pg_url", scope: Any = "session") -> Callable[..., Iterator[str]]:
    """Build a pytest fixture (default: session-scoped ``pg_url``) yielding a PostgreSQL URL.

    ``POLENG_TEST_PG_URL`` if set (nothing is started or stopped); otherwise a pgserver instance in a
    fresh temporary directory, stopped and deleted at teardown. Skips if neither is available.
    The temporary directory deliberately lives outside pytest's ``tmp_path`` tree: pytest re-chmods
    and prunes that tree from other sessions, which would pull the data directory from under a
    server run by another system user.
    """

    @pytest.fixture(scope=scope, name=name)
    def _pg_url() -> Iterator[str]:
        global startup_seconds
        external = os.environ.get(PG_URL_ENV)
        if external:
            yield to_psycopg2_url(external)
            return
        try:
            with warnings.catch_warnings():  # platformdirs: "XDG_RUNTIME_DIR is not set" (harmless)
                warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
                import pgserver
        except ImportError:  # pragma: no cover - pgserver is in requirements-dev
            pytest.skip(f"no PostgreSQL: set {PG_URL_ENV} or install pgserver")
        base = Path(tempfile.mkdtemp(prefix="poleng-pg-"))
        t0 = time.perf_counter()
        server = pgserver.get_server(base / "pgdata", cleanup_mode="delete")
        startup_seconds = time.perf_counter() - t0
        try:
            yield to_psycopg2_url(server.get_uri())
        finally:
            server.cleanup()
            shutil.rmtree(base, ignore_errors=True)

    return _pg_url


pg_url = postgres_url_fixture()


@contextmanager
def isolated_schema(base_url: str, prefix: str = "t") -> Iterator[str]:
    """Create an empty schema on ``base_url``; yield a URL whose ``search_path`` is that schema.

    Cheaper than a database per test and needs only CREATE privilege on the database, so it also
    works against a shared server. The schema is dropped (CASCADE) afterwards; close engines on the
    yielded URL before leaving the block.
    """
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
