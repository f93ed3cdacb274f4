"""A Kafka Connect distributed worker with Debezium's PostgreSQL connector, on loopback.

The worker's jars and the plugin come from Maven Central through jvm/pom.xml. `launch()` returns
as soon as the JVM runs, so `LocalServices.up()` can start PostgreSQL while the worker boots
(~15 s); `wait_ready()` returns once the REST API lists the Debezium connector.
"""

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka_assets.local.procs import (
    ServiceError,
    port_open,
    read_pid,
    require_tool,
    stop_service,
)
from kafka_assets.paths import CONNECT_JARS_DIR, CONNECT_PLUGINS_DIR

HOST = "127.0.0.1"
JSON_CONVERTER = "org.apache.kafka.connect.json.JsonConverter"
# The worker's own topics: a prefix no user topic starts with (and tests' topic clean-up skips).
INTERNAL_TOPIC_PREFIX = "_kafka_assets_connect_"
REQUIRED_PLUGIN = "io.debezium.connector.postgresql.PostgresConnector"
ENV_CONFIG_PROVIDER = "org.apache.kafka.common.config.provider.EnvVarConfigProvider"


def connect_request(
    url: str, method: str = "GET", body: Any = None, timeout: float = 10.0
) -> tuple[int, Any]:
    """One call to a Connect REST API: (HTTP status, decoded JSON or None); errors are returned."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    return status, json.loads(raw) if raw.strip() else None


@dataclass
class ConnectWorker:
    home: Path
    bootstrap_servers: str
    port: int = 18083
    group_id: str = "kafka-assets-connect"
    heap: str = "512m"
    jars_dir: Path = CONNECT_JARS_DIR
    plugins_dir: Path = CONNECT_PLUGINS_DIR
    environment: dict[str, str] = field(default_factory=dict, repr=False)
    """Added to the JVM's environment: the secrets connector configs name as `${env:...}`."""

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.home / "connect.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "connect.log"

    @property
    def config_file(self) -> Path:
        return self.home / "connect-distributed.properties"

    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def worker_properties(self) -> dict[str, str]:
        """Loopback REST, one-replica internal topics under our prefix, JSON with schemas."""
        topics = INTERNAL_TOPIC_PREFIX
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "group.id": self.group_id,
            "listeners": f"http://{HOST}:{self.port}",
            "rest.advertised.host.name": HOST,
            "rest.advertised.port": str(self.port),
            "rest.advertised.listener": "http",
            "config.storage.topic": f"{topics}configs",
            "offset.storage.topic": f"{topics}offsets",
            "status.storage.topic": f"{topics}status",
            "config.storage.replication.factor": "1",
            "offset.storage.replication.factor": "1",
            "status.storage.replication.factor": "1",
            "offset.storage.partitions": "5",
            "status.storage.partitions": "1",
            # The envelope carries its schema: CDC's Spark side derives its schema from it.
            "key.converter": JSON_CONVERTER,
            "value.converter": JSON_CONVERTER,
            "key.converter.schemas.enable": "true",
            "value.converter.schemas.enable": "true",
            "offset.flush.interval.ms": "5000",
            "plugin.path": str(self.plugins_dir),
            # Debezium and Connect's own plugins ship ServiceLoader manifests: skipping the
            # reflective classpath scan saves ~10 s of start-up.
            "plugin.discovery": "service_load",
            "topic.creation.enable": "true",
            # `${env:NAME}` in a connector config is resolved from this worker's environment,
            # so secrets never sit in the config topic or in a REST answer.
            "config.providers": "env",
            "config.providers.env.class": ENV_CONFIG_PROVIDER,
        }

    def _write_config(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        props = self.worker_properties()
        self.config_file.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.home / "log4j2.properties").write_text(
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.file.ref = FILE\n"
            "appender.file.type = File\n"
            "appender.file.name = FILE\n"
            f"appender.file.fileName = {self.log_file}\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "logger.clients.name = org.apache.kafka.clients\nlogger.clients.level = WARN\n"
            "logger.common.name = org.apache.kafka.common\nlogger.common.level = WARN\n"
            "logger.reflections.name = org.reflections\nlogger.reflections.level = ERROR\n"
        )

    def _command(self) -> list[str]:
        if not any(self.jars_dir.glob("connect-runtime-*.jar")):
            raise ServiceError(
                f"No Kafka Connect jars in {self.jars_dir}: run `python -m kafka_assets.local jars`"
            )
        java = require_tool("java", "install a Java 17 runtime (Debian: openjdk-17-jre-headless)")
        return [
            java,
            "-Xms128m",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.home}",
            "-cp",
            str(self.jars_dir / "*"),
            "org.apache.kafka.connect.cli.ConnectDistributed",
            str(self.config_file),
        ]

    def launch(self) -> bool:
        """Start the JVM unless it runs; True if this call started it. Does not wait."""
        if self.pid():
            return False
        if port_open(HOST, self.port):
            raise ServiceError(
                f"Port {self.port} on {HOST} is taken by another process: set "
                "KAFKA_ASSETS_CONNECT_PORT to a free port, or CONNECT_URL to use that worker"
            )
        self._write_config()
        command = self._command()
        log = open(self.home / "connect.stdout", "ab")
        try:
            proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.home,
                env={**os.environ, **self.environment},
            )
        finally:
            log.close()
        self.pid_file.write_text(str(proc.pid))
        return True

    def start(self, timeout: float = 120.0) -> float:
        """Launch and wait; returns the seconds until the REST API listed Debezium."""
        started = time.monotonic()
        if not self.launch():
            self.wait_ready(timeout)
            return 0.0
        self.wait_ready(timeout)
        return time.monotonic() - started

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Ready: the plugin is listed and the herder answers (GET /connectors), so a POST works.

        A worker that fails here is stopped, so a retry starts from a clean slate.
        """
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            pid = self.pid()
            if pid is None:
                self.pid_file.unlink(missing_ok=True)
                raise ServiceError(
                    f"Kafka Connect exited during start-up; see {self.log_file} "
                    f"and {self.home / 'connect.stdout'}"
                )
            if port_open(HOST, self.port):
                try:
                    status, plugins = connect_request(f"{self.url}/connector-plugins", timeout=5)
                    classes = {p.get("class") for p in plugins or []} if status == 200 else set()
                    if REQUIRED_PLUGIN in classes:
                        status, _ = connect_request(f"{self.url}/connectors", timeout=5)
                        if status == 200:
                            return
                        last = f"GET /connectors answered {status}"
                    else:
                        last = f"GET /connector-plugins answered {status}: {sorted(classes)}"
                except (OSError, ValueError) as exc:
                    last = str(exc)
            time.sleep(0.5)
        self.stop()
        raise ServiceError(
            f"Kafka Connect at {self.url} was not ready after {timeout:.0f}s ({last}); "
            f"see {self.log_file}"
        )

    def stop(self, timeout: float = 60.0) -> bool:
        return stop_service(self.pid_file, "Kafka Connect", timeout)

    def status(self) -> str:
        pid = self.pid()
        if pid is None:
            return "stopped"
        return f"running pid={pid} url={self.url} kafka={self.bootstrap_servers}"
