"""Apache Kafka 4.x nodes in KRaft combined mode (broker + controller), on loopback.

`KafkaBroker` is one node: alone, a single-node cluster (the local stack's), or one voter of a
`KafkaCluster`'s quorum, for the fault cases that need replication. The jars come from Maven
Central through jvm/pom.xml; storage is formatted on first start; start waits until the broker
answers metadata requests; stop is a clean SIGTERM shutdown.
"""

import base64
import json
import os
import signal
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
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


def random_id() -> str:
    """A Kafka Uuid as its tools print it (base64url, no padding), never starting with "-",
    which an argument parser would take for an option."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


@dataclass(frozen=True)
class Voter:
    """One controller of a multi-node quorum, as `StorageTool format --initial-controllers`
    names it: every node is formatted with the same list."""

    node_id: int
    controller_port: int
    directory_id: str

    def __str__(self) -> str:
        return f"{self.node_id}@{HOST}:{self.controller_port}:{self.directory_id}"


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
    node_id: int = 1
    voters: tuple[Voter, ...] = ()
    """The controllers of a multi-node quorum, this node among them; empty for a single node."""
    cluster_id: str = ""
    """Shared by every node of a quorum; a single node makes its own."""

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
            "node.id": str(self.node_id),
            "controller.quorum.bootstrap.servers": ",".join(
                f"{HOST}:{v.controller_port}" for v in self.voters
            )
            or f"{HOST}:{self.controller_port}",
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
            # A topic's retention.ms of seconds acts within seconds (Kafka: every 5 min, first
            # after 30 s); the scan of a few local segments costs nothing.
            "log.retention.check.interval.ms": "5000",
            "log.initial.task.delay.ms": "5000",
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
        if self.voters:
            if not self.cluster_id:
                raise ServiceError("a node of a multi-node quorum needs the cluster's id")
            quorum = "--initial-controllers=" + ",".join(str(v) for v in self.voters)
        else:
            quorum = "--standalone"
        run(
            [
                *self._java(),
                "kafka.tools.StorageTool",
                "format",
                quorum,
                # One token: a base64url id may start with "-", which argparse takes for an option.
                f"--cluster-id={self.cluster_id or random_id()}",
                "-c",
                str(self.config_file),
            ],
            what=f"Formatting Kafka KRaft storage of node {self.node_id}",
        )

    def start(self, timeout: float = 90.0) -> float:
        """Start the broker (if it is not running) and return the seconds until it was ready."""
        if self.pid():
            self.wait_ready(timeout)
            return 0.0
        started = time.monotonic()
        proc = self.launch()
        try:
            self.wait_ready(timeout, proc=proc)
        except ServiceError:
            self.stop()
            raise
        return time.monotonic() - started

    def launch(self) -> subprocess.Popen:
        """Format if needed and start the JVM, without waiting: a quorum's nodes must all be
        starting before any of them can elect a controller and become ready."""
        for port in (self.port, self.controller_port):
            if port_open(HOST, port):
                raise ServiceError(
                    f"Port {port} on {HOST} is taken by another process: set "
                    "KAFKA_ASSETS_KAFKA_PORT / KAFKA_ASSETS_CONTROLLER_PORT to free ports"
                )
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
        return proc

    def wait_ready(
        self, timeout: float, proc: subprocess.Popen | None = None, brokers: int = 1
    ) -> None:
        """Ready means a client can fetch cluster metadata naming `brokers` brokers, not merely
        that the port is open."""
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
                    if len(md.brokers) >= brokers:
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

    def kill(self) -> int | None:
        """SIGKILL the node, as a machine losing power would stop it; returns the pid killed."""
        pid = self.pid()
        if pid is None:
            return None
        os.killpg(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, 0)  # reap it when this process started it
        except ChildProcessError:
            while read_pid(self.pid_file) is not None:
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return pid

    def quorum_leader(self) -> int | None:
        """The active controller as this node last saw it (its quorum-state file), or None."""
        state = self.home / "data" / "__cluster_metadata-0" / "quorum-state"
        try:
            leader = json.loads(state.read_text()).get("leaderId", -1)
        except (OSError, ValueError):
            return None
        return leader if leader >= 0 else None

    def status(self) -> str:
        pid = self.pid()
        if pid is None:
            return "stopped"
        return f"running pid={pid} bootstrap={self.bootstrap_servers} data={self.home / 'data'}"


@dataclass
class KafkaCluster:
    """N combined nodes, every one a voter of the controller quorum, each with its own home and
    ports: a replicated cluster on one machine, for fault cases that kill a broker."""

    home: Path
    ports: list[tuple[int, int]]
    """(broker port, controller port) per node; node ids are 1..N in this order."""
    heap: str = "384m"
    properties: dict[str, str] = field(default_factory=dict)
    """Settings for every node, applied after the replication defaults."""
    nodes: list[KafkaBroker] = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.ports)
        voters = tuple(
            Voter(i, controller, random_id())
            for i, (_, controller) in enumerate(self.ports, start=1)
        )
        replicated = {
            "default.replication.factor": str(min(3, n)),
            "min.insync.replicas": str(min(2, n)),
            "offsets.topic.replication.factor": str(min(3, n)),
            "transaction.state.log.replication.factor": str(min(3, n)),
            "transaction.state.log.min.isr": str(min(2, n)),
            "share.coordinator.state.topic.replication.factor": str(min(3, n)),
            "share.coordinator.state.topic.min.isr": str(min(2, n)),
        }
        cluster_id = random_id()
        self.nodes = [
            KafkaBroker(
                self.home / f"node-{voter.node_id}",
                port,
                voter.controller_port,
                heap=self.heap,
                properties={**replicated, **self.properties},
                node_id=voter.node_id,
                voters=voters,
                cluster_id=cluster_id,
            )
            for voter, (port, _) in zip(voters, self.ports, strict=True)
        ]

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_servers for node in self.nodes)

    def node(self, node_id: int) -> KafkaBroker:
        return self.nodes[node_id - 1]

    def start(self, timeout: float = 120.0) -> float:
        """Start every node, then wait until metadata names all brokers; on failure, stop all."""
        started = time.monotonic()
        deadline = started + timeout
        try:
            # Formatting is a JVM start per node: side by side, not one after the other.
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                launched = pool.map(lambda n: (n.node_id, n.launch()), self.down())
                procs = dict(launched)
            while True:
                for node_id, proc in procs.items():
                    if proc.poll() is not None:
                        raise ServiceError(
                            f"Kafka node {node_id} exited with code {proc.returncode} during "
                            f"start-up; see {self.node(node_id).log_file}"
                        )
                try:
                    wait = max(1.0, min(5.0, deadline - time.monotonic()))
                    self.nodes[0].wait_ready(wait, brokers=len(self.nodes))
                    break
                except ServiceError:
                    if time.monotonic() > deadline:
                        raise
        except BaseException:
            self.stop()
            raise
        return time.monotonic() - started

    def down(self) -> list[KafkaBroker]:
        """The nodes that are not running (never started, stopped or killed)."""
        return [node for node in self.nodes if node.pid() is None]

    def stop(self, timeout: float = 60.0) -> list[int]:
        """Stop every node that runs, all at once, even when one fails to stop; returns the ids
        stopped. One at a time, the last broker would wait for a controller quorum that has
        already gone before it could shut down."""

        def stop(node: KafkaBroker) -> str | bool:
            try:
                return node.stop(timeout)
            except ServiceError as exc:
                return str(exc)

        with ThreadPoolExecutor(len(self.nodes)) as pool:
            outcomes = list(pool.map(stop, self.nodes))
        errors = [o for o in outcomes if isinstance(o, str)]
        if errors:
            raise ServiceError("; ".join(errors))
        return [node.node_id for node, o in zip(self.nodes, outcomes, strict=True) if o is True]

    def active_controller(self) -> int | None:
        """The quorum leader, as the majority of the nodes that still run report it."""
        seen = [node.quorum_leader() for node in self.nodes if node.pid() is not None]
        known = [leader for leader in seen if leader is not None]
        return max(set(known), key=known.count) if known else None


def running_in(home: Path) -> bool:
    return os.path.exists(home / "broker.pid") and read_pid(home / "broker.pid") is not None
