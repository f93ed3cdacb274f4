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
    home: Path
    port: int = 15432
    databases: tuple[str, ...] = ("warehouse", "dagster")
    bindir: Path | None = None
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

    def dsn(self, database: str = "warehouse") -> str:
        return f"postgresql://{SERVICE_USER}@{HOST}:{self.port}/{database}"

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
                f"Port {self.port} on {HOST} is taken by another process: set "
                "KAFKA_ASSETS_PG_PORT to a free port, or WAREHOUSE_DSN to use that server"
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
        options = " ".join(
            [
                f"-p {self.port}",
                f"-k {self.socket_dir}",
                f"-c listen_addresses={HOST}",
                "-c shared_buffers=256MB",
                "-c max_wal_size=2GB",
                "-c max_connections=100",
            ]
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
                options,
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
