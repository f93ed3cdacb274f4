"""Small process helpers shared by the broker and PostgreSQL managers."""

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path


class ServiceError(RuntimeError):
    """A local service could not be prepared, started or stopped; the message says which and why."""


def run(cmd: Sequence[str], *, what: str, env: dict[str, str] | None = None, cwd=None) -> str:
    """Run a command to completion, raising ServiceError with its output when it fails."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, env=env, cwd=cwd, check=False)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip()[-4000:]
        raise ServiceError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc.stdout


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().split(") ", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return True
    return True


def read_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def stop_process_group(pid: int, *, timeout: float = 30.0) -> None:
    """SIGTERM the process group, wait for a clean exit, SIGKILL only as a last resort."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not pid_alive(pid):
                return
            time.sleep(0.1)


def stop_service(pid_file: Path, what: str, timeout: float) -> bool:
    """Stop the service whose process group leader is in `pid_file`; False if none was running."""
    pid = read_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    stop_process_group(pid, timeout=timeout)
    if pid_alive(pid):
        raise ServiceError(f"{what} (pid {pid}) did not stop")
    pid_file.unlink(missing_ok=True)
    return True


def require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if not path:
        raise ServiceError(f"`{name}` is not on PATH: {hint}")
    return path
