"""A Spark standalone cluster (one master, one worker) or a Spark Connect server, on loopback.

Both run from the pyspark wheel itself: its `bin/spark-class` starts the standalone master and
worker, its `bin/spark-submit` the Connect server (the wheel ships the server's jar but no
`start-connect-server.sh`). Every port is explicit, so several checkouts can run side by side.
"""

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kafka_assets.local.procs import ServiceError, port_open, read_pid, stop_service
from kafka_assets.paths import SPARK_JARS_DIR
from kafka_assets.spark.resources import JVM_OPTIONS, LOCAL_MASTER, sql_config

HOST = "127.0.0.1"
CONNECT_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
SPARK_KINDS = ("local", "standalone", "connect")


def spark_home() -> Path:
    """The pyspark package directory: the wheel is a complete Spark distribution, and the
    cluster must run the very Spark version the driver does."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def _launch(command: list[str], home: Path, name: str, env: dict[str, str]) -> int:
    """Start a daemon in its own process group, output to `<name>.out`; returns its pid."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / f"{name}.out", "ab") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=home,
            env=env,
        )
    (home / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def _base_env(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SPARK_HOME": str(spark_home()),
        "SPARK_LOCAL_IP": HOST,
        "SPARK_LOG_DIR": str(home),
        "SPARK_PID_DIR": str(home),
        # Driver-side Python for what runs in the server (Spark Connect's foreachBatch).
        "PYSPARK_PYTHON": sys.executable,
    }


@dataclass
class SparkStandalone:
    """A standalone master and one worker; applications reach it at `master_url`."""

    home: Path
    master_port: int = 17077
    master_ui_port: int = 18080
    worker_port: int = 17078
    worker_ui_port: int = 18081
    worker_cores: int = 2
    worker_memory: str = "2g"

    @property
    def master_url(self) -> str:
        return f"spark://{HOST}:{self.master_port}"

    @property
    def ui_url(self) -> str:
        return f"http://{HOST}:{self.master_ui_port}"

    def _env(self) -> dict[str, str]:
        return {
            **_base_env(self.home),
            # The master's and worker's own JVMs stay small; executors are sized per application.
            # (The launcher gives the Connect server this heap too, so it is set only here.)
            "SPARK_DAEMON_MEMORY": "256m",
            "SPARK_MASTER_HOST": HOST,
            "SPARK_MASTER_PORT": str(self.master_port),
            "SPARK_MASTER_WEBUI_PORT": str(self.master_ui_port),
            "SPARK_WORKER_PORT": str(self.worker_port),
            "SPARK_WORKER_WEBUI_PORT": str(self.worker_ui_port),
            "SPARK_WORKER_CORES": str(self.worker_cores),
            "SPARK_WORKER_MEMORY": self.worker_memory,
            "SPARK_WORKER_DIR": str(self.home / "work"),
            # Executors' scratch space (shuffle, spills) under the cluster's home, not /tmp.
            "SPARK_LOCAL_DIRS": str(self.home / "scratch"),
            # The master's REST submission server would take port 6066 on every checkout.
            "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
        }

    def _commands(self) -> dict[str, list[str]]:
        spark_class = str(spark_home() / "bin" / "spark-class")
        return {
            "master": [
                spark_class,
                "org.apache.spark.deploy.master.Master",
                *("--host", HOST, "--port", str(self.master_port)),
                *("--webui-port", str(self.master_ui_port)),
            ],
            "worker": [
                spark_class,
                "org.apache.spark.deploy.worker.Worker",
                *("--host", HOST, "--port", str(self.worker_port)),
                *("--webui-port", str(self.worker_ui_port)),
                *("--cores", str(self.worker_cores), "--memory", self.worker_memory),
                *("--work-dir", str(self.home / "work")),
                self.master_url,
            ],
        }

    def launch(self) -> bool:
        """Start master and worker unless running; True if this call started them. No wait."""
        if read_pid(self.home / "master.pid"):
            return False
        ports = (self.master_port, self.master_ui_port, self.worker_port, self.worker_ui_port)
        taken = [p for p in ports if port_open(HOST, p)]
        if taken:
            raise ServiceError(
                f"Ports {taken} on {HOST} are taken by another process: set the "
                "KAFKA_ASSETS_SPARK_*_PORT settings to free ports"
            )
        env, commands = self._env(), self._commands()
        (self.home / "work").mkdir(parents=True, exist_ok=True)
        _launch(commands["master"], self.home, "master", env)
        # The worker retries its registration, so it can start while the master boots.
        _launch(commands["worker"], self.home, "worker", env)
        return True

    def start(self, timeout: float = 90.0) -> float:
        """Launch and wait; the seconds until the master listed an ALIVE worker."""
        started = time.monotonic()
        self.launch()
        self.wait_ready(timeout)
        return time.monotonic() - started

    def master_state(self) -> dict:
        """The master's web UI summary (`/json`): workers, active and completed applications."""
        with urllib.request.urlopen(f"{self.ui_url}/json", timeout=5) as response:
            return json.loads(response.read())

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Ready: the master answers and lists an ALIVE worker. A failed start is stopped."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            for name in ("master", "worker"):
                if read_pid(self.home / f"{name}.pid") is None:
                    self.stop()
                    raise ServiceError(
                        f"the Spark {name} exited during start-up; see {self.home / name}.out"
                    )
            if port_open(HOST, self.master_ui_port):
                try:
                    workers = self.master_state().get("workers") or []
                    if any(w.get("state") == "ALIVE" for w in workers):
                        return
                    last = f"workers {[w.get('state') for w in workers]}"
                except (OSError, ValueError) as exc:
                    last = str(exc)
            time.sleep(0.5)
        self.stop()
        raise ServiceError(
            f"the Spark master at {self.ui_url} listed no ALIVE worker after {timeout:.0f}s "
            f"({last}); see {self.home}/master.out and worker.out"
        )

    def stop(self, timeout: float = 30.0) -> bool:
        """The worker first (it takes its executors along), then the master."""
        worker = stop_service(self.home / "worker.pid", "Spark worker", timeout)
        master = stop_service(self.home / "master.pid", "Spark master", timeout)
        return worker or master

    def status(self) -> str:
        pid = read_pid(self.home / "master.pid")
        if pid is None:
            return "stopped"
        worker = read_pid(self.home / "worker.pid")
        return (
            f"running master pid={pid} worker pid={worker} url={self.master_url} ui={self.ui_url}"
        )


@dataclass
class SparkConnectServer:
    """A Spark Connect server (local mode inside) with the Kafka connector; clients use `url`."""

    home: Path
    port: int = 15002
    jars_dir: Path = SPARK_JARS_DIR
    master: str = LOCAL_MASTER
    driver_memory: str = "2g"

    @property
    def url(self) -> str:
        return f"sc://{HOST}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.home / "connect-server.pid"

    def _command(self) -> list[str]:
        jars = sorted(self.jars_dir.glob("*.jar"))
        if not jars:
            raise ServiceError(
                f"No Spark Kafka connector jars in {self.jars_dir}: run "
                "`python -m kafka_assets.local jars`"
            )
        settings = {
            "spark.connect.grpc.binding.address": HOST,
            "spark.connect.grpc.binding.port": str(self.port),
            "spark.driver.host": HOST,
            "spark.driver.extraJavaOptions": JVM_OPTIONS,
            "spark.ui.enabled": "false",
            **sql_config(),
        }
        return [
            str(spark_home() / "bin" / "spark-submit"),
            *("--class", CONNECT_SERVER_CLASS, "--master", self.master),
            *("--driver-memory", self.driver_memory),
            *("--name", "kafka-assets-connect"),
            *("--jars", ",".join(str(j) for j in jars)),
            *(arg for k, v in settings.items() for arg in ("--conf", f"{k}={v}")),
            # spark-submit needs a primary resource; the server class is in the wheel's jars.
            "spark-internal",
        ]

    def launch(self) -> bool:
        if read_pid(self.pid_file):
            return False
        if port_open(HOST, self.port):
            raise ServiceError(
                f"Port {self.port} on {HOST} is taken by another process: set "
                "KAFKA_ASSETS_SPARK_CONNECT_PORT to a free port"
            )
        _launch(self._command(), self.home, "connect-server", _base_env(self.home))
        return True

    def start(self, timeout: float = 90.0) -> float:
        started = time.monotonic()
        self.launch()
        self.wait_ready(timeout)
        return time.monotonic() - started

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Ready: the gRPC port accepts connections."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if read_pid(self.pid_file) is None:
                self.pid_file.unlink(missing_ok=True)
                raise ServiceError(
                    f"the Spark Connect server exited during start-up; see "
                    f"{self.home / 'connect-server.out'}"
                )
            if port_open(HOST, self.port):
                return
            time.sleep(0.5)
        self.stop()
        raise ServiceError(
            f"the Spark Connect server on port {self.port} did not listen after {timeout:.0f}s; "
            f"see {self.home / 'connect-server.out'}"
        )

    def stop(self, timeout: float = 30.0) -> bool:
        return stop_service(self.pid_file, "Spark Connect server", timeout)

    def status(self) -> str:
        pid = read_pid(self.pid_file)
        return "stopped" if pid is None else f"running pid={pid} url={self.url}"
