"""Bring the local stack up and down, and describe it as the environment the code reads.

`up()` honours servers the environment already names: a WAREHOUSE_DSN is used as it is and no
PostgreSQL is started; KAFKA_BOOTSTRAP_SERVERS likewise for Kafka, SOURCE_DSN for the legacy
source PostgreSQL that CDC reads, and CONNECT_URL for the Kafka Connect worker.

Spark runs in local mode inside each run unless KAFKA_ASSETS_SPARK asks for a standalone cluster
or a Spark Connect server (and SPARK_MASTER does not already name one); `.env` then points
SPARK_MASTER at it.
"""

import functools
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kafka_assets.local import legacy_source
from kafka_assets.local.connect_worker import ConnectWorker
from kafka_assets.local.jars import CONNECT_PROFILES, PROFILES, ensure_jars
from kafka_assets.local.kafka_broker import KafkaBroker
from kafka_assets.local.postgres import LocalPostgres
from kafka_assets.local.procs import ServiceError
from kafka_assets.local.spark_cluster import SPARK_KINDS, SparkConnectServer, SparkStandalone
from kafka_assets.paths import ENV_FILE, LOCAL_DIR
from kafka_assets.spark.resources import LOCAL_MASTER, spark_kind


@dataclass
class Endpoints:
    bootstrap_servers: str
    warehouse_dsn: str
    dagster_pg_url: str
    state_dir: Path
    timings: dict[str, float] = field(default_factory=dict)
    connect_url: str = ""
    source_dsn: str = ""
    source_cdc_user: str = legacy_source.CDC_USER
    source_cdc_password: str = field(default="", repr=False)
    spark_master: str = ""
    """The cluster or Connect server `up()` started; empty when runs use local mode."""

    def as_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The settings `.env.example` documents, filled in for these services."""
        base = base or {}
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "KAFKA_SECURITY_PROTOCOL": base.get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
            "KAFKA_SASL_MECHANISM": base.get("KAFKA_SASL_MECHANISM", ""),
            "KAFKA_SASL_USERNAME": base.get("KAFKA_SASL_USERNAME", ""),
            "KAFKA_SASL_PASSWORD": base.get("KAFKA_SASL_PASSWORD", ""),
            "KAFKA_SSL_CA_LOCATION": base.get("KAFKA_SSL_CA_LOCATION", ""),
            "WAREHOUSE_DSN": self.warehouse_dsn,
            "WAREHOUSE_SCHEMA": base.get("WAREHOUSE_SCHEMA", "shop"),
            "SPARK_MASTER": self.spark_master or base.get("SPARK_MASTER") or LOCAL_MASTER,
            "SPARK_CHECKPOINT_BASE": str(self.state_dir / "spark" / "checkpoints"),
            "SPARK_STAGING_BASE": str(self.state_dir / "spark" / "staging"),
            "DAGSTER_HOME": str(self.state_dir / "dagster_home"),
            "DAGSTER_PG_URL": self.dagster_pg_url,
            "CONNECT_URL": self.connect_url,
            "SOURCE_DSN": self.source_dsn,
            "SOURCE_CDC_USER": self.source_cdc_user,
            "SOURCE_CDC_PASSWORD": self.source_cdc_password,
        }


@dataclass
class LocalServices:
    state_dir: Path = LOCAL_DIR
    kafka_port: int = 19092
    controller_port: int = 19093
    pg_port: int = 15432
    connect_port: int = 18083
    source_pg_port: int = 15433
    spark: str = "local"
    """local (no process: each run starts Spark in local mode), standalone or connect."""
    spark_master_port: int = 17077
    spark_master_ui_port: int = 18080
    spark_worker_port: int = 17078
    spark_worker_ui_port: int = 18081
    spark_connect_port: int = 15002
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ), repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "LocalServices":
        env = dict(os.environ if environ is None else environ)
        return cls(
            kafka_port=int(env.get("KAFKA_ASSETS_KAFKA_PORT", 19092)),
            controller_port=int(env.get("KAFKA_ASSETS_CONTROLLER_PORT", 19093)),
            pg_port=int(env.get("KAFKA_ASSETS_PG_PORT", 15432)),
            connect_port=int(env.get("KAFKA_ASSETS_CONNECT_PORT", 18083)),
            source_pg_port=int(env.get("KAFKA_ASSETS_SOURCE_PG_PORT", 15433)),
            spark=env.get("KAFKA_ASSETS_SPARK") or "local",
            spark_master_port=int(env.get("KAFKA_ASSETS_SPARK_MASTER_PORT", 17077)),
            spark_master_ui_port=int(env.get("KAFKA_ASSETS_SPARK_MASTER_UI_PORT", 18080)),
            spark_worker_port=int(env.get("KAFKA_ASSETS_SPARK_WORKER_PORT", 17078)),
            spark_worker_ui_port=int(env.get("KAFKA_ASSETS_SPARK_WORKER_UI_PORT", 18081)),
            spark_connect_port=int(env.get("KAFKA_ASSETS_SPARK_CONNECT_PORT", 15002)),
            environ=env,
        )

    @property
    def broker(self) -> KafkaBroker:
        return KafkaBroker(self.state_dir / "kafka", self.kafka_port, self.controller_port)

    @property
    def postgres(self) -> LocalPostgres:
        return LocalPostgres(self.state_dir / "postgres", self.pg_port)

    @property
    def source_cdc_password(self) -> str:
        """The replication role's password: SOURCE_CDC_PASSWORD, else the throwaway default."""
        return self.environ.get("SOURCE_CDC_PASSWORD") or "cdc-local-only"

    @property
    def source_postgres(self) -> LocalPostgres:
        """A second cluster with logical decoding on; the warehouse's settings stay as they are."""
        return LocalPostgres(
            self.state_dir / "source-postgres",
            self.source_pg_port,
            databases=(legacy_source.DATABASE,),
            settings=legacy_source.SERVER_SETTINGS,
            init=functools.partial(legacy_source.prepare, password=self.source_cdc_password),
            port_hint=(
                "set KAFKA_ASSETS_SOURCE_PG_PORT to a free port, or SOURCE_DSN to use that server"
            ),
        )

    def connect_worker(self, bootstrap_servers: str | None = None) -> ConnectWorker:
        return ConnectWorker(
            self.state_dir / "connect",
            bootstrap_servers
            or self.environ.get("KAFKA_BOOTSTRAP_SERVERS")
            or self.broker.bootstrap_servers,
            self.connect_port,
            environment={"SOURCE_CDC_PASSWORD": self.source_cdc_password},
        )

    @property
    def spark_standalone(self) -> SparkStandalone:
        return SparkStandalone(
            self.state_dir / "spark-cluster",
            self.spark_master_port,
            self.spark_master_ui_port,
            self.spark_worker_port,
            self.spark_worker_ui_port,
        )

    @property
    def spark_connect(self) -> SparkConnectServer:
        return SparkConnectServer(self.state_dir / "spark-connect", self.spark_connect_port)

    def _spark_to_start(self) -> SparkStandalone | SparkConnectServer | None:
        """The Spark service to start: none in local mode or when SPARK_MASTER names one."""
        if self.spark not in SPARK_KINDS:
            raise ServiceError(
                f"KAFKA_ASSETS_SPARK={self.spark!r}: expected one of {', '.join(SPARK_KINDS)}"
            )
        named = self.environ.get("SPARK_MASTER", "")
        if self.spark == "local" or (named and spark_kind(named) != "local"):
            return None
        return self.spark_standalone if self.spark == "standalone" else self.spark_connect

    def up(self) -> Endpoints:
        timings: dict[str, float] = {}
        spark = self._spark_to_start()
        connect_url = self.environ.get("CONNECT_URL", "")
        t = time.monotonic()
        ensure_jars(tuple(p for p in PROFILES if not (connect_url and p in CONNECT_PROFILES)))
        timings["jars_s"] = time.monotonic() - t

        bootstrap = self.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            timings["kafka_start_s"] = self.broker.start()
            bootstrap = self.broker.bootstrap_servers

        # The worker needs only Kafka: it boots while the PostgreSQL clusters start.
        worker = None
        if not connect_url:
            worker = self.connect_worker(bootstrap)
            connect_launched = time.monotonic()
            worker.launch()
            connect_url = worker.url

        # Spark's daemons need nothing else either: they boot alongside PostgreSQL too.
        if spark is not None:
            spark_launched = time.monotonic()
            spark.launch()

        dsn = self.environ.get("WAREHOUSE_DSN")
        dagster_url = self.environ.get("DAGSTER_PG_URL", "")
        if not dsn:
            pg = self.postgres
            timings["postgres_start_s"] = pg.start()
            dsn = pg.dsn("warehouse")

        source_dsn = self.environ.get("SOURCE_DSN")
        if not source_dsn:
            source = self.source_postgres
            timings["source_pg_start_s"] = source.start()
            source_dsn = source.dsn(legacy_source.DATABASE)

        if worker is not None:
            worker.wait_ready()
            timings["connect_start_s"] = time.monotonic() - connect_launched
        spark_master = ""
        if spark is not None:
            spark.wait_ready()
            timings[f"spark_{self.spark}_start_s"] = time.monotonic() - spark_launched
            spark_master = getattr(spark, "master_url", None) or spark.url

        endpoints = Endpoints(
            bootstrap,
            dsn,
            dagster_url,
            self.state_dir,
            timings,
            connect_url=connect_url,
            source_dsn=source_dsn,
            source_cdc_user=self.environ.get("SOURCE_CDC_USER") or legacy_source.CDC_USER,
            source_cdc_password=self.source_cdc_password,
            spark_master=spark_master,
        )
        write_dagster_yaml(Path(endpoints.as_env()["DAGSTER_HOME"]), postgres=bool(dagster_url))
        return endpoints

    def down(self) -> list[str]:
        """The worker first: it stops cleanly only while its Kafka is still there."""
        stopped = []
        if self.spark_standalone.stop():
            stopped.append("spark-standalone")
        if self.spark_connect.stop():
            stopped.append("spark-connect")
        if self.connect_worker().stop():
            stopped.append("connect")
        if self.broker.stop():
            stopped.append("kafka")
        if self.postgres.stop():
            stopped.append("postgres")
        if self.source_postgres.stop():
            stopped.append("source-postgres")
        return stopped

    def status(self) -> dict[str, str]:
        return {
            "kafka": self.broker.status(),
            "postgres": self.postgres.status(),
            "source-pg": self.source_postgres.status(),
            "connect": self.connect_worker().status(),
            "spark": self.spark_standalone.status(),
            "spark-conn": self.spark_connect.status(),
        }


def write_dagster_yaml(dagster_home: Path, *, postgres: bool) -> Path:
    """Dagster keeps runs/events/schedules in PostgreSQL when DAGSTER_PG_URL is set, else SQLite.

    Runs are queued one at a time: two runs of one stream would race on its checkpoint, and two
    Spark drivers do not fit a small machine. The queue is looked at every second (Dagster's
    default is 5 s): a sensor's run waits for it before it starts, and freshness pays that wait.
    """
    dagster_home.mkdir(parents=True, exist_ok=True)
    path = dagster_home / "dagster.yaml"
    storage = (
        "storage:\n  postgres:\n    postgres_url:\n      env: DAGSTER_PG_URL\n" if postgres else ""
    )
    path.write_text(
        "# Written by kafka_assets.local. DAGSTER_PG_URL set: dagster-postgres, else SQLite.\n"
        + storage
        + "telemetry:\n  enabled: false\n"
        + "concurrency:\n  runs:\n    max_concurrent_runs: 1\n"
        + "run_queue:\n  dequeue_interval_seconds: 1\n"
    )
    return path


def write_env_file(env: Mapping[str, str], path: Path = ENV_FILE) -> Path:
    path.write_text(
        "# Written by `python -m kafka_assets.local up`; see .env.example for what each means.\n"
        + "".join(f"{k}={v}\n" for k, v in env.items())
    )
    return path
