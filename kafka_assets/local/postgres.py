"""A throwaway PostgreSQL cluster from the system's binaries, on loopback.

PostgreSQL refuses to run as root, so when we are root the cluster runs as the `postgres` user
(`runuser -u postgres -- ...`) in a directory that user owns; an ordinary user runs it directly.
"""

import glob
import hashlib
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kafka_assets.local.procs import ServiceError, port_open, run

HOST = "127.0.0.1"
SERVICE_USER = "postgres"


def find_bindir() -> Path | None:
    """Debian keeps server binaries off PATH in /usr/lib/postgresql/<major>/bin: take the newest."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def install_binaries() -> Path:
    """Install Debian's `postgresql` package when allowed to; otherwise say what to do."""
    bindir = find_bindir()
    if bindir:
        return bindir
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ServiceError(
            "PostgreSQL server binaries (initdb, pg_ctl) were not found. Install them "
            "(Debian/Ubuntu: sudo apt-get install postgresql) or set WAREHOUSE_DSN to a server."
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], what="apt-get update", env=env)
    run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"],
        what="apt-get install postgresql",
        env=env,
    )
    bindir = find_bindir()
    if not bindir:
        raise ServiceError("apt-get installed postgresql but initdb is still missing")
    return bindir


@dataclass
class LocalPostgres:
    """One cluster; `settings` and `init` let a second cluster differ (e.g. logical decoding).

    `init` runs after the databases exist on every start, so it must be idempotent.
    """

    home: Path
    port: int = 15432
    databases: tuple[str, ...] = ("warehouse", "dagster")
    bindir: Path | None = None
    settings: Mapping[str, str] = field(default_factory=dict)
    init: Callable[["LocalPostgres"], None] | None = None
    port_hint: str = "set KAFKA_ASSETS_PG_PORT to a free port, or WAREHOUSE_DSN to use that server"
    _as_root: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._as_root = os.geteuid() == 0
        if self._as_root:
            self.home = self._root_home(self.home)

    @staticmethod
    def _root_home(preferred: Path) -> Path:
        """As root the cluster belongs to `postgres`, who must be able to reach the data directory.

        A checkout under a private home (e.g. /root) is not reachable, so fall back to a directory
        under /var/tmp that is specific to this checkout.
        """
        probe = preferred.parent
        while not probe.exists():
            probe = probe.parent
        reachable = (
            subprocess.run(
                ["runuser", "-u", SERVICE_USER, "--", "test", "-x", str(probe)],
                capture_output=True,
                check=False,
            ).returncode
            == 0
        )
        if reachable:
            return preferred
        digest = hashlib.sha256(str(preferred).encode()).hexdigest()[:10]
        return Path("/var/tmp") / f"kafka-assets-{digest}" / preferred.name

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def socket_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_file(self) -> Path:
        return self.home / "postgres.log"

    def dsn(self, database: str | None = None) -> str:
        """The superuser's DSN; the first of `databases` unless another is named."""
        return f"postgresql://{SERVICE_USER}@{HOST}:{self.port}/{database or self.databases[0]}"

    def server_options(self) -> str:
        """`pg_ctl -o`: loopback only, this cluster's port and socket, then `settings`."""
        settings = {
            "listen_addresses": HOST,
            "shared_buffers": "256MB",
            "max_wal_size": "2GB",
            "max_connections": "100",
            **self.settings,
        }
        return " ".join(
            [f"-p {self.port}", f"-k {self.socket_dir}"]
            + [f"-c {name}={value}" for name, value in settings.items()]
        )

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", SERVICE_USER, "--", *args] if self._as_root else list(args)

    def _bin(self, name: str) -> str:
        if self.bindir is None:
            self.bindir = install_binaries()
        return str(self.bindir / name)

    def _prepare_dirs(self) -> None:
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self._as_root:
            uid = pwd.getpwnam(SERVICE_USER).pw_uid
            gid = pwd.getpwnam(SERVICE_USER).pw_gid
            for path in (self.home, self.socket_dir, *(p for p in self.home.rglob("*"))):
                os.chown(path, uid, gid)

    def running(self) -> bool:
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        proc = subprocess.run(
            self._cmd(self._bin("pg_ctl"), "-D", str(self.data_dir), "status"),
            capture_output=True,
            check=False,
        )
        return proc.returncode == 0

    def start(self, timeout: int = 60) -> float:
        """initdb on first use, start, wait, create the databases; returns seconds to ready."""
        started = time.monotonic()
        if self.running():
            self._create_databases()
            return 0.0
        if port_open(HOST, self.port):
            raise ServiceError(
                f"Port {self.port} on {HOST} is taken by another process: {self.port_hint}"
            )
        self.home.mkdir(parents=True, exist_ok=True)
        self._prepare_dirs()
        if not (self.data_dir / "PG_VERSION").exists():
            run(
                self._cmd(
                    self._bin("initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SERVICE_USER,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-instructions",
                ),
                what="initdb",
            )
        run(
            self._cmd(
                self._bin("pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                str(timeout),
                "-o",
                self.server_options(),
                "start",
            ),
            what=f"Starting PostgreSQL (log: {self.log_file})",
        )
        self._create_databases()
        return time.monotonic() - started

    def _create_databases(self) -> None:
        import psycopg
        from psycopg import sql

        conn = psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=10)
        try:
            existing = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
            for name in self.databases:
                if name not in existing:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            conn.close()
        if self.init is not None:
            self.init(self)

    def stop(self) -> bool:
        if not self.running():
            return False
        run(
            self._cmd(self._bin("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"),
            what="Stopping PostgreSQL",
        )
        return True

    def status(self) -> str:
        if not self.data_dir.exists() or not self.running():
            return "stopped"
        return f"running dsn={self.dsn()} data={self.data_dir}"
