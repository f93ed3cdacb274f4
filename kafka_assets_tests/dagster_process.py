"""Dagster's own processes (`dagster dev`, `dagster-daemon`) over the test services.

Dagster reads `.env` from its working directory and lets it win over the environment, so each
process runs from a directory of its own holding the test settings and a workspace that points at
this checkout; a checkout's `.env` from `make demo` can then never redirect it.
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from kafka_assets.local.services import write_env_file
from kafka_assets.paths import PROJECT_ROOT


def start_dagster(
    command: Sequence[str], env: Mapping[str, str], workdir: Path, log: Path
) -> subprocess.Popen:
    """Start `command` (e.g. ["dagster", "dev", ...]) from `workdir`, in its own process group."""
    workdir.mkdir(parents=True, exist_ok=True)
    write_env_file(env, workdir / ".env")
    (workdir / "workspace.yaml").write_text(
        "load_from:\n  - python_module:\n      module_name: kafka_assets.definitions\n"
        f"      working_directory: {PROJECT_ROOT}\n"
    )
    binary = Path(sys.executable).parent / command[0]
    with open(log, "wb") as out:
        return subprocess.Popen(
            [str(binary), *command[1:]],
            cwd=workdir,
            env=dict(os.environ),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group (webserver, daemon, code servers, run workers and their
    Spark JVMs), then SIGKILL: `dagster dev` does not always finish shutting down on SIGTERM."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 30)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; its group may not be.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        break


def wait_for(what: str, predicate, timeout: float, log: Path, interval: float = 0.5):
    """Poll `predicate` until it returns something truthy; on timeout show the process's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; log:\n{tail}")
