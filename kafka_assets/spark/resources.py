"""Spark settings: which Spark a run uses (one setting, SPARK_MASTER) and where state lives."""

from pathlib import Path
from typing import Any

import dagster as dg
from dagster_pyspark import LazyPySparkResource
from pydantic import PrivateAttr
from pyspark.sql import SparkSession

from kafka_assets.paths import SPARK_JARS_DIR
from kafka_assets.spark.streams import StreamSpec

LOCAL_MASTER = "local[2]"


class SparkMismatch(RuntimeError):
    """This process already runs a Spark session on another master; a JVM holds only one."""


def spark_kind(master: str) -> str:
    """`local`, `standalone` (spark://host:port) or `connect` (sc://host:port)."""
    if master.startswith("sc://"):
        return "connect"
    if master.startswith("spark://"):
        return "standalone"
    if master == "local" or master.startswith("local["):
        return "local"
    raise ValueError(
        f"SPARK_MASTER={master!r}: expected local[N], spark://host:port (a standalone cluster) "
        "or sc://host:port (a Spark Connect server)"
    )


JVM_OPTIONS = "-XX:-DontCompileHugeMethods -XX:+UseParallelGC"
"""For every JVM that runs Spark tasks.

HotSpot leaves a method over 8,000 bytes of bytecode to its interpreter, and the parse's
whole-stage generated method is over that (11 kB for the shop's orders): compiled, the parse
takes about a quarter less CPU. The throughput collector costs the parse's many short-lived
objects less than G1 (its write barriers and concurrent threads): a stream of 1M orders took
12.2 core-seconds instead of 13.9. Its pauses (0.2 s at most there) do not matter to batches.
"""


def sql_config() -> dict[str, str]:
    """Session settings every kind of Spark takes, Spark Connect included."""
    return {
        "spark.sql.shuffle.partitions": "4",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.streaming.numRecentProgressUpdates": "10000",
        "spark.sql.streaming.stateStore.providerClass": (
            "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
        ),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Timestamps as INT64 micros, not INT96: Parquet then keeps min/max statistics for them,
        # which the warehouse reads to report how old the newest loaded message was.
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    }


def spark_config(
    master: str = LOCAL_MASTER,
    jars_dir: Path = SPARK_JARS_DIR,
    executor_memory: str = "1g",
    executor_cores: int = 1,
    max_cores: int = 2,
) -> dict[str, str]:
    """Settings for a driver in this process (local mode or a standalone cluster), sized for a
    small machine, with the Kafka connector on the classpath.

    The connector jars were resolved by Maven (jvm/pom.xml, profile `spark`); nothing is
    downloaded when the session starts.
    """
    config = {
        "spark.master": master,
        "spark.app.name": "kafka-assets",
        # A classpath wildcard, read by the JVM as it starts: `spark.jars` would take a glob
        # too, but SparkContext then logs an ERROR for it on every start.
        "spark.driver.extraClassPath": str(jars_dir / "*"),
        "spark.driver.memory": "2g",
        "spark.driver.extraJavaOptions": JVM_OPTIONS,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        **sql_config(),
    }
    if spark_kind(master) == "standalone":
        # Local mode runs the executors in the driver's JVM; a cluster's executors get the
        # connector from the driver, which serves `spark.jars` to them. That works for a remote
        # cluster too, where an executor classpath naming this machine's folder would not.
        config["spark.jars"] = ",".join(str(j) for j in sorted(jars_dir.glob("*.jar")))
        config["spark.driver.memory"] = "1g"  # the executors do the work now
        config["spark.executor.memory"] = executor_memory
        config["spark.executor.cores"] = str(executor_cores)
        config["spark.executor.extraJavaOptions"] = JVM_OPTIONS
        config["spark.cores.max"] = str(max_cores)
    return config


class SparkResource(dg.ConfigurableResource):
    """The Spark session of a run, on whatever `master` (SPARK_MASTER) names, built on first use.

    The master is read at run time. A classic session (local mode, a standalone cluster) is built
    by dagster-pyspark's LazyPySparkResource from `spark_config`; `sc://` gets a Spark Connect
    session (`builder.remote`), which dagster-pyspark does not build. Either way assets use
    `pyspark.spark_session`.
    """

    master: str = LOCAL_MASTER
    executor_memory: str = "1g"
    """Per executor on a standalone cluster; ignored in local mode and by Spark Connect."""
    executor_cores: int = 1
    max_cores: int = 2
    """The most cores the run takes from a standalone cluster (`spark.cores.max`)."""

    _spark_session: Any = PrivateAttr(default=None)

    @property
    def kind(self) -> str:
        return spark_kind(self.master)

    @property
    def spark_session(self) -> SparkSession:
        if self._spark_session is None:
            self._spark_session = self._build()
        return self._spark_session

    def _build(self) -> SparkSession:
        if self.kind == "connect":
            builder = SparkSession.builder.remote(self.master)
            for key, value in sql_config().items():
                builder = builder.config(key, value)
            return builder.getOrCreate()
        config = spark_config(
            self.master,
            executor_memory=self.executor_memory,
            executor_cores=self.executor_cores,
            max_cores=self.max_cores,
        )
        session = LazyPySparkResource(spark_config=config).spark_session
        running = session.sparkContext.master
        if running != self.master:
            # getOrCreate hands back the process's existing session whatever master was asked.
            raise SparkMismatch(
                f"SPARK_MASTER is {self.master} but this process already runs Spark on "
                f"{running}; one process holds one SparkContext, so run this in a new process"
            )
        return session


def build_pyspark_resource(master: str = LOCAL_MASTER) -> SparkResource:
    """Lazy: a run that touches no Spark asset never pays the JVM start-up."""
    return SparkResource(master=master)


class StreamingSettings(dg.ConfigurableResource):
    """Where streaming queries keep checkpoints and staged output (local paths or Hadoop URIs)."""

    checkpoint_base: str
    staging_base: str
    max_offsets_per_trigger: int = 2_000_000
    """Bounds each micro-batch however large the backlog. Every micro-batch costs a plan of the
    parse (about 0.6 s), a Spark job for each table that folds totals and a transaction per
    table, so batches are large. Memory does not grow with them: the stream reads each partition
    through an iterator into Parquet row groups of 32 MiB, and the warehouse reads a staged batch
    in chunks. A stream whose loads hold a batch whole takes a lower bound of its own."""
    lock_timeout_s: int = 1800
    """How long a run waits for another run of the same stream to release its checkpoint."""

    def max_offsets(self, spec: StreamSpec) -> int:
        """The micro-batch bound for one stream: this resource's, or the stream's if lower."""
        own = spec.max_offsets_per_trigger
        return min(self.max_offsets_per_trigger, own) if own else self.max_offsets_per_trigger

    def checkpoint_path(self, stream: str) -> str:
        return join_uri(self.checkpoint_base, stream)

    def staging_path(self, stream: str) -> str:
        return join_uri(self.staging_base, stream)


def join_uri(base: str, *parts: str) -> str:
    """Join under a local path (made absolute) or a Hadoop URI such as s3a://bucket/prefix."""
    if "://" not in base and not base.startswith("file:"):
        base = str(Path(base).resolve())
    return "/".join([base.rstrip("/"), *parts])
