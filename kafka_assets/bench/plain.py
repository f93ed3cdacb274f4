"""The baseline for Dagster's overhead: the same streams and loads as a plain pyspark script.

This is what a user would write without an orchestrator: each stream's availableNow query into
staged Parquet, then each table's load. It calls the project's own stream and load code, so the
only difference from a Dagster run is Dagster (and what the assets add around the same work:
the checkpoint lock, the replay plan, the topic description, metadata).
"""

import time
from dataclasses import dataclass

from pyspark.sql import SparkSession

from kafka_assets.kafka.resources import KafkaResource
from kafka_assets.lib.pipeline.component import KafkaPipeline
from kafka_assets.spark.resources import StreamingSettings
from kafka_assets.spark.staging import StagedStream, list_batches
from kafka_assets.spark.streams import run_available_now
from kafka_assets.warehouse.assets import rejected
from kafka_assets.warehouse.io_manager import Loader, TableLoad
from kafka_assets.warehouse.resources import PostgresResource
from kafka_assets.warehouse.tables import quarantine_table


@dataclass
class PlainRun:
    seconds: float
    steps: dict[str, float]
    rows_in: dict[str, int]


def run_pipeline(
    spark: SparkSession,
    pipeline: KafkaPipeline,
    kafka: KafkaResource,
    streaming: StreamingSettings,
    warehouse: PostgresResource,
    run_id: str = "plain-script",
) -> PlainRun:
    """Every stream of `pipeline`, then every table and the quarantine; returns step times."""
    steps: dict[str, float] = {}
    rows: dict[str, int] = {}
    began = time.monotonic()
    for stream in pipeline.streams:
        t = time.monotonic()
        run = run_available_now(
            spark,
            stream.spec,
            kafka.spark_options(),
            streaming.checkpoint_path(stream.name),
            streaming.staging_path(stream.name),
            streaming.max_offsets(stream.spec),
        )
        steps[f"spark/{stream.name}"] = time.monotonic() - t
        rows[f"spark/{stream.name}"] = run.input_rows
    loader = Loader(warehouse, run_id)

    def staged(name: str) -> StagedStream:
        batches = tuple(list_batches(spark, streaming.staging_path(name)))
        plan = next(s for s in pipeline.streams if s.name == name)
        return StagedStream(name, spark, batches, readers=tuple(pipeline.readers(plan)))

    loads = []
    for plan in pipeline.table_plans:
        source = staged(plan.stream.name)
        mapper = pipeline.mapper(plan)
        if mapper is not None:
            source = source.map(mapper)
        loads.append(TableLoad(plan.table, (source,)))
    events = staged(pipeline.events.name).map(rejected)
    loads.append(TableLoad(quarantine_table(pipeline.quarantine.table), (events,)))
    for load in loads:
        t = time.monotonic()
        stats = loader.table(load)
        steps[f"warehouse/{load.table.name}"] = time.monotonic() - t
        rows[f"warehouse/{load.table.name}"] = stats.rows_in
    return PlainRun(time.monotonic() - began, steps, rows)
