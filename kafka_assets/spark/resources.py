"""Spark settings: dagster-pyspark builds the session; this says how, and where state lives."""

from pathlib import Path

import dagster as dg
from dagster_pyspark import LazyPySparkResource

from kafka_assets.paths import SPARK_JARS_DIR


def spark_config(master: str = "local[2]", jars_dir: Path = SPARK_JARS_DIR) -> dict[str, str]:
    """Local-mode settings sized for a small machine, with the Kafka connector on the classpath.

    The connector jars were resolved by Maven (jvm/pom.xml, profile `spark`); nothing is
    downloaded when the session starts.
    """
    return {
        "spark.master": master,
        "spark.app.name": "kafka-assets",
        # A classpath wildcard, read by the JVM as it starts: `spark.jars` would take a glob
        # too, but SparkContext then logs an ERROR for it on every start. Local mode runs the
        # executors in the driver's JVM, so the driver's classpath is enough.
        "spark.driver.extraClassPath": str(jars_dir / "*"),
        "spark.driver.memory": "2g",
        "spark.sql.shuffle.partitions": "4",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.streaming.numRecentProgressUpdates": "10000",
        "spark.sql.streaming.stateStore.providerClass": (
            "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
        ),
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Timestamps as INT64 micros, not INT96: Parquet then keeps min/max statistics for them,
        # which the warehouse reads to report how old the newest loaded message was.
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    }


def build_pyspark_resource(master: str = "local[2]") -> LazyPySparkResource:
    """Lazy: a run that touches no Spark asset never pays the JVM start-up."""
    return LazyPySparkResource(spark_config=spark_config(master))


class StreamingSettings(dg.ConfigurableResource):
    """Where streaming queries keep checkpoints and staged output (local paths or Hadoop URIs)."""

    checkpoint_base: str
    staging_base: str
    max_offsets_per_trigger: int = 250_000
    """Bounds each micro-batch, and so the memory of a run, however large the backlog."""
    lock_timeout_s: int = 1800
    """How long a run waits for another run of the same stream to release its checkpoint."""

    def checkpoint_path(self, stream: str) -> str:
        return join_uri(self.checkpoint_base, stream)

    def staging_path(self, stream: str) -> str:
        return join_uri(self.staging_base, stream)


def join_uri(base: str, *parts: str) -> str:
    """Join under a local path (made absolute) or a Hadoop URI such as s3a://bucket/prefix."""
    if "://" not in base and not base.startswith("file:"):
        base = str(Path(base).resolve())
    return "/".join([base.rstrip("/"), *parts])
