"""The CLI as users run it: light start-up, tables, the MLflow UI, a real table via POLENG_DATA."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from poleng.settings import Settings
from tests.conftest import make_settings, subprocess_env


def poleng(*args: str, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "poleng", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_light_commands_do_not_import_heavy_libraries() -> None:
    code = ("import sys, poleng.cli, poleng.flow, poleng.drift, poleng.ledger; "
            "print(sorted(m for m in ('mlflow', 'xgboost', 'evidently', 'hyperopt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_models_and_status_tables(initialized_home: Path) -> None:
    env = subprocess_env(make_settings(initialized_home))
    models = poleng("models", env=env)
    assert models.returncode == 0, models.stderr
    assert "champion" in models.stdout and "first champion" in models.stdout
    status = poleng("status", env=env)
    assert status.returncode == 0, status.stderr
    assert "ledger sqlite:///" in status.stdout


def test_process_before_init_is_a_one_line_error(tmp_path: Path) -> None:
    s = make_settings(tmp_path / "state")
    s.inbox.mkdir(parents=True)
    (s.inbox / "b.parquet").write_bytes(b"x")
    proc = poleng("process", env=subprocess_env(s))
    assert proc.returncode == 1
    assert "no champion" in proc.stderr and "poleng init" in proc.stderr and "Traceback" not in proc.stderr
    assert (s.inbox / "b.parquet").exists()


def test_rollback_without_previous_champion_is_a_clear_error(initialized_home: Path) -> None:
    proc = poleng("rollback", env=subprocess_env(make_settings(initialized_home)))
    assert proc.returncode == 1 and "no previous champion" in proc.stderr and "Traceback" not in proc.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_ui_serves_the_embedded_store(initialized_home: Path) -> None:
    port = _free_port()
    env = subprocess_env(make_settings(initialized_home))
    proc = subprocess.Popen([sys.executable, "-m", "poleng", "ui", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/registered-models/search"
        deadline = time.time() + 180
        body = None
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    body = json.loads(resp.read())
                break
            except OSError:
                time.sleep(1)
        assert body is not None, "MLflow UI did not come up"
        (model,) = body["registered_models"]
        assert model["name"] == "political-engagement"
        assert {a["alias"] for a in model["aliases"]} >= {"champion"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slow
def test_a_real_table_in_csv_trains_unchanged(tmp_path: Path) -> None:
    """POLENG_DATA names a CSV file exactly as a user would hand it over."""
    table = tmp_path / "wvs_extract.csv"
    env = subprocess_env(make_settings(tmp_path / "state"), POLENG_TRIALS="2")
    gen = poleng("data", "generate", str(table), "--rows", "20000", "--seed", "3", env=env)
    assert gen.returncode == 0, gen.stderr
    env["POLENG_DATA"] = str(table)
    init = poleng("init", env=env)
    assert init.returncode == 0, init.stderr
    assert "promoted: first champion" in init.stdout
    s = Settings(_env_file=None, home=tmp_path / "state", data=table, tracking_uri=None)
    manifest = json.loads((s.source_dir / "manifest.json").read_text())
    assert manifest["identity"]["data"] == str(table) and manifest["rows"] == 20000
    # Changing the source under an initialised state is refused, not mixed.
    env["POLENG_DATA"] = str(tmp_path / "other.csv")
    (tmp_path / "other.csv").write_text(table.read_text())
    again = poleng("simulate", "clean_batches", env=env)
    assert again.returncode == 1 and "was built from" in again.stderr
