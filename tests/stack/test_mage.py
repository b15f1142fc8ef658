"""The Mage project ``mage_pipelines/`` end to end: headless runs, the server's API trigger, the UIs.

* Headless ``mage run`` of every scenario pipeline, each in its own state dir, started together at
  the beginning of the module (they run in parallel while the cheap checks run):
  - ``clean_batches`` then ``bad_batches`` through Mage in one fresh home, and the same two through
    the CLI (``python -m poleng simulate``) in another: the two ledgers must agree batch by batch,
    and both must meet the scenario files' ``expect`` tables;
  - ``init_project`` through Mage once; copies of that home then run ``drift_batches``,
    ``drift_without_labels``, ``unreliable_source`` and ``full_simulation`` (checked against their
    ``expect`` tables), and the home itself finally runs ``reset_project``.
* ``mage start`` in its own process group: login, an API trigger for ``process_batches`` scores a
  staged batch; the committed ``every_minute`` schedule is loaded; screenshots of the pipeline list.
* The MLflow UI over the Mage-trained home shows the registered model with its ``champion`` alias.

Screenshots go to ``test-artifacts/`` (git-ignored). Every process is started in its own process
group and the group is stopped (and checked empty) at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from poleng import contract, scenarios
from poleng.ledger import BatchRecord, Ledger
from poleng.settings import Settings
from tests.conftest import make_settings
from tests.stack.browser import chromium, group_members, stop_group

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ROOT / "mage_pipelines"
ARTIFACTS = ROOT / "test-artifacts"
VENV_BIN = Path(sys.executable).parent
MAGE = str(VENV_BIN / "mage")
# Mage's built-in OAuth client id of its own frontend (mage_ai/settings/server.py): the REST API
# wants it in X-API-KEY next to the oauth_token cookie.
MAGE_FRONTEND_CLIENT_ID = "zkWlN0PkIKSN0C11CfUHUj84OT5XOJ6tDZ6bDRO2"
MAGE_USER = {"email": "admin@admin.com", "password": "admin"}
RUN_TIMEOUT_S = 900.0
# At most this many runs at once: more only thrash 2 cores (each trains with 2 XGBoost threads).
PARALLEL_RUNS = threading.BoundedSemaphore(3)

PARITY = ("clean_batches", "bad_batches")  # Mage and CLI, chained in one home each
FROM_INIT = ("drift_batches", "drift_without_labels", "unreliable_source", "full_simulation")


# --- running commands in their own process group ------------------------------------------------


def _env(home: Path) -> dict[str, str]:
    """Test-sized settings for a subprocess; no MLFLOW_* (embedded store), Mage data in the home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POLENG_", "MLFLOW_", "MAGE_"))}
    env.update(
        POLENG_HOME=str(home),
        POLENG_ROWS="30000",
        POLENG_TRIALS="3",
        POLENG_MAX_BOOST_ROUNDS="300",
        MAGE_DATA_DIR=str(home / "mage_data"),
        MLFLOW_DISABLE_TELEMETRY="true",
        PYTHONUNBUFFERED="1",
    )
    return env


def _settings(home: Path) -> Settings:
    return make_settings(home)


@dataclass
class Step:
    """One command of a chain and what came of it."""

    label: str
    cmd: list[str]
    returncode: int | None = None
    seconds: float = 0.0
    output: dict[str, Any] | None = None  # the Mage block's output (its JSON summary)


@dataclass
class Chain:
    """Commands run one after the other in one state dir, in a background thread."""

    name: str
    home: Path
    steps: list[Step]
    log: Path
    before: Chain | None = None  # wait for this chain, then copy its home (without Mage's data)
    thread: threading.Thread | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"chain-{self.name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            if self.before is not None:
                self.before.wait()
                shutil.copytree(self.before.home, self.home, ignore=shutil.ignore_patterns("mage_data"))
            self.home.mkdir(parents=True, exist_ok=True)
            for step in self.steps:
                with PARALLEL_RUNS:
                    step.returncode, step.seconds = _run_in_group(step.cmd, _env(self.home), self.log, step.label)
                if step.returncode != 0:
                    break
                step.output = _block_output(self.home, step.cmd)
        except BaseException as exc:  # noqa: BLE001 - reported by wait()
            self.error = exc
        finally:
            self.done.set()

    def wait(self) -> Chain:
        if not self.done.wait(RUN_TIMEOUT_S * max(len(self.steps), 1)):
            raise TimeoutError(f"chain {self.name} did not finish")
        if self.error is not None:
            raise RuntimeError(f"chain {self.name} failed: {self.error!r}") from self.error
        failed = [s for s in self.steps if s.returncode != 0]
        assert not failed, f"{failed[0].label} exited {failed[0].returncode}; log:\n{_tail(self.log)}"
        return self

    def step(self, label: str) -> Step:
        return next(s for s in self.steps if s.label == label)


def _run_in_group(cmd: list[str], env: dict[str, str], log: Path, label: str) -> tuple[int, float]:
    """Run ``cmd`` in its own session; on timeout stop the whole group. Returns (rc, seconds)."""
    t0 = time.monotonic()
    with open(log, "ab") as fh:
        fh.write(f"\n===== {label}: {' '.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(  # noqa: S603
            cmd, env=env, cwd=log.parent, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            rc = -9
        if group_members(proc.pid):  # a child left behind by the command: stop it too
            stop_group(proc)
    seconds = round(time.monotonic() - t0, 1)
    with open(log, "ab") as fh:
        fh.write(f"===== {label}: exit {rc} after {seconds} s\n".encode())
    return rc, seconds


def _tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def _block_output(home: Path, cmd: list[str]) -> dict[str, Any] | None:
    """The JSON a ``mage run`` pipeline's single block returned (Mage stores it in MAGE_DATA_DIR)."""
    if cmd[0] != MAGE:
        return None
    pipeline = cmd[3]
    variables = home / "mage_data" / PROJECT.name / "pipelines" / pipeline / ".variables"
    found = sorted(variables.glob("*/output_0/data.json"))
    return json.loads(found[0].read_text()) if found else None


def _mage_run(pipeline: str, **runtime: object) -> Step:
    cmd = [MAGE, "run", str(PROJECT), pipeline]
    if runtime:
        cmd += ["--runtime-vars", json.dumps(runtime)]
    return Step(pipeline, cmd)


def _cli_simulate(name: str) -> Step:
    return Step(f"cli {name}", [sys.executable, "-m", "poleng", "simulate", name])


@dataclass
class Runs:
    chains: dict[str, Chain]
    started: float

    def wait(self, name: str) -> Chain:
        return self.chains[name].wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """Start every headless run at once (background threads); tests wait for the ones they check."""
    base = tmp_path_factory.mktemp("mage-runs")

    def chain(name: str, steps: list[Step], before: Chain | None = None) -> Chain:
        (base / name).mkdir()
        return Chain(name, base / name / "home", steps, base / name / "run.log", before)

    init = chain("init", [_mage_run("init_project")])
    chains = {
        "mage": chain("mage", [_mage_run(f"scenario_{n}") for n in PARITY]),
        "cli": chain("cli", [_cli_simulate(n) for n in PARITY]),
        "init": init,
    }
    for name in FROM_INIT:
        chains[name] = chain(name, [_mage_run(f"scenario_{name}")], before=init)
    # The initialised home itself is reset once the copies are done with it (their MLflow
    # experiments keep artifacts under its mlartifacts/). retrain_model is left out: another
    # training (~50 CPU-s) that the drift scenarios' retraining already covers.
    chains["lifecycle"] = Chain("lifecycle", init.home, [_mage_run("reset_project")], base / "init" / "reset.log")
    handle = Runs(chains, time.monotonic())
    for c in chains.values():
        if c.name != "lifecycle":
            c.start()
    yield handle
    for c in chains.values():
        if c.thread is not None:
            c.done.wait(RUN_TIMEOUT_S)
    for c in chains.values():
        print(f"{c.name}: " + ", ".join(f"{s.label} {s.seconds}s rc={s.returncode}" for s in c.steps))


# --- checks ----------------------------------------------------------------------------------------


def _ledger(home: Path) -> list[BatchRecord]:
    ledger = Ledger(_settings(home).resolved_ledger_url)
    try:
        return ledger.list()
    finally:
        ledger.close()


def _outcomes(home: Path) -> dict[str, tuple[object, ...]]:
    """Per file: what the ledger says happened to it."""
    return {
        r.file_name: (str(r.status), r.action, r.quarantine_reason, r.drift, r.rows_valid, r.contacts,
                      r.model_version)
        for r in _ledger(home)
    }


def check_expectations(name: str, home: Path, summary: dict[str, Any] | None) -> None:
    """A scenario's ``expect`` tables against the block's summary and against the ledger."""
    assert summary is not None and summary["scenario"] == name, summary
    sc = scenarios.load(name)
    by_file = {b["file_name"]: b for b in summary["batches"]}
    ledger = {r.file_name: r for r in _ledger(home)}
    s = _settings(home)
    for index, step in enumerate(sc.steps, start=1):
        if step.kind != "batch":
            continue
        files = [f for f in by_file if f.startswith(f"{index:02d}-{step.name}.")]
        assert len(files) == 1, (step.name, sorted(by_file))
        got, expect = by_file[files[0]], step.expect
        for key in ("status", "action", "reason", "drift"):
            if key in expect:
                assert got[key] == expect[key], (name, files[0], key, got)
        if expect["status"] == "duplicate":
            assert files[0] not in ledger, "a duplicate is not a new batch in the ledger"
            assert list(s.quarantine.glob(f"*__{files[0]}")), "a duplicate is set aside"
            continue
        record = ledger[files[0]]
        assert str(record.status) == expect["status"], (files[0], record)
        if "action" in expect:
            assert record.action == expect["action"], (files[0], record)
        if expect["status"] == "quarantined":
            assert record.quarantine_reason == expect["reason"], (files[0], record)
    assert not [p for p in s.inbox.iterdir() if p.is_file()], "nothing may stay in the inbox"


def test_project_layout_and_scenario_pipelines() -> None:
    """Static checks of the project: pipelines per scenario, schedule, concurrency, retention."""
    project = yaml.safe_load((PROJECT / "metadata.yaml").read_text())
    assert project["variables_retention_period"] and project["logging_config"]["retention_period"]
    assert "MAGE_DATA_DIR" in project["variables_dir"]
    pipelines = {p.name for p in (PROJECT / "pipelines").iterdir() if (p / "metadata.yaml").exists()}
    expected = {"process_batches", "init_project", "retrain_model", "reset_project", "mage_housekeeping"}
    expected |= {f"scenario_{n}" for n in scenarios.available()}
    assert pipelines == expected
    for name in scenarios.available():
        meta = yaml.safe_load((PROJECT / "pipelines" / f"scenario_{name}" / "metadata.yaml").read_text())
        assert meta["tags"] == ["scenario"]
        assert meta["variables"] == {"scenario": name, "profile": "quick", "seed": 42}
        assert " ".join(scenarios.load(name).description.split()) in meta["description"]
        assert [b["uuid"] for b in meta["blocks"]] == ["run_scenario"]
    for meta_path in (PROJECT / "pipelines").glob("*/metadata.yaml"):
        meta = yaml.safe_load(meta_path.read_text())
        for b in meta["blocks"]:
            assert (PROJECT / "custom" / f"{b['uuid']}.py").exists(), b
            assert len((PROJECT / "custom" / f"{b['uuid']}.py").read_text().splitlines()) < 30, "thin blocks"
    batches = yaml.safe_load((PROJECT / "pipelines" / "process_batches" / "metadata.yaml").read_text())
    assert batches["concurrency_config"] == {"pipeline_run_limit": 1, "on_pipeline_run_limit_reached": "skip"}
    (trigger,) = yaml.safe_load((PROJECT / "pipelines" / "process_batches" / "triggers.yaml").read_text())["triggers"]
    assert trigger["schedule_type"] == "time" and trigger["schedule_interval"] == "* * * * *"
    assert trigger["status"] == "active" and trigger["settings"]["skip_if_previous_running"] is True


def test_mage_scenarios_match_cli(runs: Runs) -> None:
    mage, cli = runs.wait("mage"), runs.wait("cli")
    mage_outcomes, cli_outcomes = _outcomes(mage.home), _outcomes(cli.home)
    assert mage_outcomes == cli_outcomes
    assert len(mage_outcomes) >= 10
    for name in PARITY:
        check_expectations(name, mage.home, mage.step(f"scenario_{name}").output)


@pytest.mark.parametrize("name", FROM_INIT)
def test_mage_scenario_expectations(runs: Runs, name: str) -> None:
    c = runs.wait(name)
    check_expectations(name, c.home, c.step(f"scenario_{name}").output)


def test_mage_init_and_reset(runs: Runs) -> None:
    init = runs.wait("init")
    out = init.step("init_project").output
    assert out is not None and out["promoted"] and out["champion_after"] == out["version"] == "1", out
    for name in FROM_INIT:  # the copies read artifacts under this home until they are done
        runs.chains[name].done.wait(RUN_TIMEOUT_S)
    lifecycle = runs.chains["lifecycle"]
    lifecycle.start()
    lifecycle.wait()
    reset = lifecycle.step("reset_project").output
    assert reset is not None and "mlflow.db" in reset["removed"], reset
    assert sorted(p.name for p in lifecycle.home.iterdir()) == ["mage_data"], "Mage's own data is kept"


# --- the Mage server ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _http_ok(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError):
        return False


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args!r} exited {proc.returncode}:\n{_tail(log)}")
        if _http_ok(url):
            return round(time.monotonic() - t0, 1)
        time.sleep(1.0)
    raise AssertionError(f"{url} did not answer within {timeout} s:\n{_tail(log)}")


@dataclass
class MageServer:
    url: str
    home: Path
    token: str = ""

    def api(self, method: str, path: str, body: dict[str, Any] | None = None, auth: bool = True) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["X-API-KEY"] = MAGE_FRONTEND_CLIENT_ID
            if self.token:
                headers["Cookie"] = f"oauth_token={self.token}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=60) as resp:
            payload = json.loads(resp.read())
        assert not payload.get("error"), payload["error"]
        return dict(payload)


@pytest.fixture(scope="module")
def mage_server(runs: Runs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MageServer]:
    """``mage start`` over the home where Mage ran clean_batches + bad_batches (initialised)."""
    home = runs.wait("mage").home
    log = tmp_path_factory.mktemp("mage-server") / "mage.log"
    port = _free_port()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(  # noqa: S603
            [MAGE, "start", str(PROJECT), "--port", str(port)], env=_env(home), cwd=log.parent,
            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = MageServer(f"http://127.0.0.1:{port}", home)
    try:
        seconds = _wait_http(f"{server.url}/api/status", proc, log, timeout=240)
        print(f"mage start: /api/status after {seconds} s")
        yield server
    finally:
        stop_group(proc)
        left = group_members(proc.pid)
        assert not left, f"mage start left processes behind: {left}"


def _stage_batch(settings: Settings, name: str) -> Path:
    """2,500 initial-study rows into the inbox, written aside and renamed (as a field office would)."""
    from poleng import lifecycle

    frame = lifecycle.prepare_source(settings).initial_pool[contract.BATCH_COLUMNS].head(2500)
    staging = settings.inbox / ".staging"
    staging.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(staging / name, index=False)
    return (staging / name).rename(settings.inbox / name)


def test_mage_server_api_trigger_scores_a_batch(mage_server: MageServer) -> None:
    status = mage_server.api("GET", "/api/status", auth=False)["statuses"][0]
    assert status["require_user_authentication"] is True and status["scheduler_status"] == "running"
    session = mage_server.api("POST", "/api/sessions", {"session": MAGE_USER})["session"]
    mage_server.token = session["token"]

    # The committed schedule is loaded (triggers.yaml), with its skip-while-running setting.
    schedules = mage_server.api("GET", "/api/pipelines/process_batches/pipeline_schedules")["pipeline_schedules"]
    (every_minute,) = [s for s in schedules if s["name"] == "every_minute"]
    assert every_minute["schedule_interval"] == "* * * * *" and every_minute["status"] == "active"
    assert every_minute["settings"]["skip_if_previous_running"] is True

    created = mage_server.api("POST", "/api/pipelines/process_batches/pipeline_schedules",
                              {"pipeline_schedule": {"name": "test-api", "schedule_type": "api", "status": "active"}})
    schedule = created["pipeline_schedule"]
    settings = _settings(mage_server.home)
    batch = _stage_batch(settings, "api-trigger-batch.parquet")

    t0 = time.monotonic()
    run = mage_server.api("POST", f"/api/pipeline_schedules/{schedule['id']}/pipeline_runs/{schedule['token']}",
                          {"pipeline_run": {"variables": {}}}, auth=False)["pipeline_run"]
    status_now = run["status"]
    while status_now not in ("completed", "failed", "cancelled") and time.monotonic() - t0 < 600:
        time.sleep(3)
        status_now = mage_server.api("GET", f"/api/pipeline_runs/{run['id']}")["pipeline_run"]["status"]
    assert status_now == "completed", f"pipeline run {run['id']}: {status_now}"
    run_seconds = round(time.monotonic() - t0, 1)

    # The every-minute schedule may have claimed the file first (same loop, exactly once by the
    # ledger): wait until the batch is scored, whichever run scored it.
    record = None
    while time.monotonic() - t0 < 600:
        record = next((r for r in _ledger(mage_server.home) if r.file_name == batch.name), None)
        if record is not None and str(record.status) == "scored":
            break
        time.sleep(3)
    assert record is not None and str(record.status) == "scored", record
    assert record.action == "scored" and record.contacts and record.contacts > 0
    assert not batch.exists()
    print(f"API-triggered process_batches run completed after {run_seconds} s")


def test_mage_ui_lists_the_scenario_pipelines(mage_server: MageServer, tmp_path: Path) -> None:
    if not mage_server.token:
        mage_server.token = mage_server.api("POST", "/api/sessions", {"session": MAGE_USER})["session"]["token"]
    names = [f"scenario_{n}" for n in scenarios.available()]
    with chromium(tmp_path / "chromium") as browser:
        with browser.page() as page:
            # Mage's frontend keeps the login token in the oauth_token cookie.
            page.set_cookie(mage_server.url, "oauth_token", mage_server.token)
            page.goto(f"{mage_server.url}/pipelines")
            text = page.wait_for_text(["process_batches", "retrain_model", *names], timeout=120)
            time.sleep(2)  # let fonts and icons settle
            shot = page.screenshot(ARTIFACTS / "mage_pipelines.png")
        assert "Sign in" not in text
        with browser.page(width=1600, height=2600) as page:
            page.goto(f"{mage_server.url}/pipelines?tag%5B%5D=scenario")
            text = page.wait_for_text(names, timeout=120)
            time.sleep(2)
            tall = page.screenshot(ARTIFACTS / "mage_scenario_pipelines.png")
        assert "process_batches" not in text, "the scenario tag filter shows only scenario pipelines"
    for png in (shot, tall):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 30_000, png


# --- the MLflow UI -----------------------------------------------------------------------------------


def test_mlflow_ui_shows_the_champion(runs: Runs, tmp_path: Path) -> None:
    home = runs.wait("mage").home
    settings = _settings(home)
    port = _free_port()
    log = tmp_path / "mlflow.log"
    env = _env(home)
    env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", settings.resolved_tracking_uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=fh, stderr=subprocess.STDOUT,  # noqa: S603
                                start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc, log, timeout=180)
        with chromium(tmp_path / "chromium") as browser, browser.page() as page:
            page.goto(f"http://127.0.0.1:{port}/#/models/{settings.model_name}")
            text = page.wait_for_text([settings.model_name, "champion", "Version 1"], timeout=120)
            time.sleep(2)
            shot = page.screenshot(ARTIFACTS / "mlflow_model_champion.png")
        assert "@ champion" in text or "champion" in text
    finally:
        stop_group(proc)
        left = group_members(proc.pid)
        assert not left, f"mlflow server left processes behind: {left}"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
