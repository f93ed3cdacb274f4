"""Staged batches load through pyarrow when Spark is not needed; the rows must be Spark's own.

The warehouse sends what `read_arrow` returns to COPY as CSV, so the test compares that CSV
byte for byte with the CSV of Spark's read of the same batch, for every table the shop's orders
pipeline loads: the latest-state table, the aggregate and the quarantine.
"""

import io

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from pyspark.sql import functions as F

from kafka_assets.shop.generator import ORDERS_TOPIC
from kafka_assets.spark.parsing import aggregate
from kafka_assets.spark.staging import StagedBatch, StagedStream
from kafka_assets.warehouse.assets import rejected, valid_rows
from kafka_assets.warehouse.tables import quarantine_table, table_for
from kafka_assets_tests.unit.test_parsing import (
    ORDERS_PIPELINE,
    kafka_frame,
    messages,  # noqa: F401 - the fixture
    order_events,
    table,
)


def _csv(data: pa.Table) -> bytes:
    out = io.BytesIO()
    pacsv.write_csv(data, out, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    return b"".join(sorted(out.getvalue().splitlines(keepends=True)))


@pytest.fixture(scope="module", params=["TIMESTAMP_MICROS", "INT96"])
def staged(request, spark, messages, tmp_path_factory):  # noqa: F811
    """The orders' parsed events and revenue aggregate, staged as a stream's batch is."""
    previous = spark.conf.get("spark.sql.parquet.outputTimestampType")
    spark.conf.set("spark.sql.parquet.outputTimestampType", request.param)
    root = tmp_path_factory.mktemp(f"staged-{request.param}")
    try:
        events = order_events(kafka_frame(spark, ORDERS_TOPIC, messages)[0])
        events.write.parquet(str(root / "events"))
        revenue = table(ORDERS_PIPELINE, "revenue_per_minute")
        aggregate(events, revenue, ORDERS_PIPELINE.format).write.parquet(str(root / "revenue"))
    finally:
        spark.conf.set("spark.sql.parquet.outputTimestampType", previous)
    return root


def _stream(spark, path) -> tuple[StagedStream, StagedBatch]:
    batch = StagedBatch("q", 0, f"file:{path}")
    return StagedStream("orders_events", spark, (batch,)), batch


def _both_ways(stream: StagedStream, batch: StagedBatch, columns: list[str]):
    by_spark = stream.read(batch).select(*columns).toArrow()
    return by_spark, pa.concat_tables(stream.read_arrow(batch, columns, 700))


def test_valid_rows_through_arrow_are_sparks_rows(spark, staged) -> None:
    orders = table_for(ORDERS_PIPELINE, table(ORDERS_PIPELINE, "orders"))
    stream, batch = _stream(spark, staged / "events")
    stream = stream.map(valid_rows(orders))
    assert stream.arrow is not None
    by_spark, by_arrow = _both_ways(stream, batch, orders.column_names)
    assert by_arrow.num_rows == by_spark.num_rows > 1000
    assert by_arrow.schema.field("event_time").type == pa.timestamp("us", tz="UTC")
    assert _csv(by_arrow) == _csv(by_spark)


def test_rejected_rows_through_arrow_are_sparks_rows(spark, staged) -> None:
    quarantine = quarantine_table("quarantine")
    stream, batch = _stream(spark, staged / "events")
    by_spark, by_arrow = _both_ways(stream.map(rejected), batch, quarantine.column_names)
    assert by_arrow.num_rows == by_spark.num_rows >= 20
    assert _csv(by_arrow) == _csv(by_spark)


def test_aggregate_rows_through_arrow_are_sparks_rows(spark, staged) -> None:
    revenue = table_for(ORDERS_PIPELINE, table(ORDERS_PIPELINE, "revenue_per_minute"))
    stream, batch = _stream(spark, staged / "revenue")
    by_spark, by_arrow = _both_ways(stream, batch, revenue.column_names)
    assert by_arrow.num_rows == by_spark.num_rows >= 10
    assert _csv(by_arrow) == _csv(by_spark)


def test_a_where_or_a_spark_transform_keeps_the_spark_read(spark, staged) -> None:
    """A SQL condition has no Arrow twin: the batch is read by Spark, and the rows are right."""
    orders = table_for(ORDERS_PIPELINE, table(ORDERS_PIPELINE, "orders"))
    stream, batch = _stream(spark, staged / "events")
    paid = stream.map(valid_rows(orders, "status = 'paid'"))
    assert paid.arrow is None
    rows = pa.concat_tables(paid.read_arrow(batch, orders.column_names, 700))
    assert set(rows.column("status").to_pylist()) == {"paid"}
    assert stream.map(lambda df: df.where(F.lit(True))).map(rejected).arrow is None
