"""A single Apache Kafka 4.x node in KRaft combined mode (broker + controller), on loopback.

The jars come from Maven Central through jvm/pom.xml; storage is formatted on first start; start
waits until the broker answers metadata requests; stop is a clean SIGTERM shutdown.
"""

import base64
import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from kafka_assets.local.procs import (
    ServiceError,
    port_open,
    read_pid,
    require_tool,
    run,
    stop_service,
)
from kafka_assets.paths import KAFKA_JARS_DIR

HOST = "127.0.0.1"


@dataclass
class KafkaBroker:
    home: Path
    port: int = 19092
    controller_port: int = 19093
    heap: str = "768m"
    jars_dir: Path = KAFKA_JARS_DIR
    extra_listeners: dict[str, int] = field(default_factory=dict)
    """More listeners on loopback, {security protocol: port}, e.g. {"SASL_SSL": 19094}."""
    properties: dict[str, str] = field(default_factory=dict)
    """Broker settings applied last (the extra listeners' TLS and SASL settings)."""

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "broker.log"

    @property
    def config_file(self) -> Path:
        return self.home / "server.properties"

    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def _classpath(self) -> str:
        if not any(self.jars_dir.glob("kafka_2.13-*.jar")):
            raise ServiceError(
                f"No Kafka jars in {self.jars_dir}: run `python -m kafka_assets.local jars` first"
            )
        return str(self.jars_dir / "*")

    def _java(self) -> list[str]:
        java = require_tool("java", "install a Java 17 runtime (Debian: openjdk-17-jre-headless)")
        return [
            java,
            "-Xms256m",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.home}",
            "-cp",
            self._classpath(),
        ]

    def _write_config(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        data = self.home / "data"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{HOST}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": "3",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.check.interval.ms": "30000",
        }
        for protocol, port in self.extra_listeners.items():
            props["listeners"] += f",{protocol}://{HOST}:{port}"
            props["advertised.listeners"] += f",{protocol}://{HOST}:{port}"
            props["listener.security.protocol.map"] += f",{protocol}:{protocol}"
        props.update(self.properties)
        self.config_file.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.home / "log4j2.properties").write_text(
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.file.ref = FILE\n"
            "appender.file.type = File\n"
            "appender.file.name = FILE\n"
            f"appender.file.fileName = {self.log_file}\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "logger.kafka.name = kafka\nlogger.kafka.level = WARN\n"
            "logger.apache.name = org.apache.kafka\nlogger.apache.level = WARN\n"
            "logger.server.name = kafka.server.KafkaRaftServer\nlogger.server.level = INFO\n"
        )

    def _format_storage(self) -> None:
        if (self.home / "data" / "meta.properties").exists():
            return
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        run(
            [
                *self._java(),
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                # One token: a base64url id may start with "-", which argparse takes for an option.
                f"--cluster-id={cluster_id}",
                "-c",
                str(self.config_file),
            ],
            what="Formatting Kafka KRaft storage",
        )

    def start(self, timeout: float = 90.0) -> float:
        """Start the broker (if it is not running) and return the seconds until it was ready."""
        if self.pid():
            self.wait_ready(timeout)
            return 0.0
        for port in (self.port, self.controller_port):
            if port_open(HOST, port):
                raise ServiceError(
                    f"Port {port} on {HOST} is taken by another process: set "
                    "KAFKA_ASSETS_KAFKA_PORT / KAFKA_ASSETS_CONTROLLER_PORT to free ports"
                )
        started = time.monotonic()
        self._write_config()
        self._format_storage()
        log = open(self.home / "broker.stdout", "ab")
        try:
            proc = subprocess.Popen(
                [*self._java(), "kafka.Kafka", str(self.config_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.home,
            )
        finally:
            log.close()
        self.pid_file.write_text(str(proc.pid))
        try:
            self.wait_ready(timeout, proc=proc)
        except ServiceError:
            self.stop()
            raise
        return time.monotonic() - started

    def wait_ready(self, timeout: float, proc: subprocess.Popen | None = None) -> None:
        """Ready means a client can fetch cluster metadata, not merely that the port is open."""
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise ServiceError(
                    f"Kafka exited with code {proc.returncode} during start-up; "
                    f"see {self.log_file} and {self.home / 'broker.stdout'}"
                )
            if port_open(HOST, self.port):
                try:
                    admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
                    md = admin.list_topics(timeout=2)
                    if md.brokers:
                        return
                except Exception as exc:  # noqa: BLE001 - retried until the deadline
                    last_error = exc
            time.sleep(0.25)
        raise ServiceError(
            f"Kafka at {self.bootstrap_servers} was not ready after {timeout:.0f}s "
            f"(last error: {last_error}); see {self.log_file}"
        )

    def stop(self, timeout: float = 60.0) -> bool:
        return stop_service(self.pid_file, "Kafka", timeout)

    def status(self) -> str:
        pid = self.pid()
        if pid is None:
            return "stopped"
        return f"running pid={pid} bootstrap={self.bootstrap_servers} data={self.home / 'data'}"


def running_in(home: Path) -> bool:
    return os.path.exists(home / "broker.pid") and read_pid(home / "broker.pid") is not None
