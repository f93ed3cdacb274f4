"""Totals the warehouse keeps: each staged batch adds its partial totals once, and a replay's
messages, staged again under a new query, are never counted twice. Real Spark and PostgreSQL."""

import uuid

import pytest
from psycopg import sql
from pyspark.sql import functions as F

from kafka_assets.shop.generator import ORDERS_TOPIC
from kafka_assets.spark.parsing import aggregate
from kafka_assets.spark.staging import StagedBatch, StagedStream
from kafka_assets.spec import TableSpec
from kafka_assets.warehouse.assets import partial_totals
from kafka_assets.warehouse.io_manager import Loader, TableLoad
from kafka_assets.warehouse.resources import PostgresResource
from kafka_assets.warehouse.tables import table_for
from kafka_assets_tests.unit.test_parsing import (
    ORDERS_PIPELINE,
    kafka_frame,
    messages,  # noqa: F401 - the fixture
    order_events,
)

pytestmark = pytest.mark.integration

# Every kind of measure a fold combines: sums and counts add, minimums and maximums compare.
SPEC = TableSpec.model_validate(
    {
        "name": "paid_stats",
        "mode": "aggregate",
        "where": "status = 'paid'",
        "window": {"size": "1 minute"},
        "group_by": ["currency"],
        "measures": [
            {"name": "revenue", "agg": "sum", "column": "amount"},
            {"name": "orders", "agg": "count"},
            {"name": "smallest", "agg": "min", "column": "amount"},
            {"name": "largest", "agg": "max", "column": "amount"},
        ],
    }
)
TABLE = table_for(ORDERS_PIPELINE, SPEC)


def _totals(rows) -> dict:
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


@pytest.fixture(scope="module")
def events(spark, messages):  # noqa: F811
    return order_events(kafka_frame(spark, ORDERS_TOPIC, messages)[0]).cache()


def _stage(events, where: str, query: str, batch: int, root) -> StagedBatch:
    path = root / f"query={query}" / f"batch={batch:012d}"
    events.where(where).write.parquet(str(path))
    return StagedBatch(query, batch, f"file:{path}")


def _expected(events, where: str) -> dict:
    rows = aggregate(events.where(where), SPEC, ORDERS_PIPELINE.format, watermark=False)
    start = F.unix_millis("window_start")
    return _totals(rows.select(start, *TABLE.column_names[2:]).collect())


def _stored(warehouse: PostgresResource) -> dict:
    with warehouse.connect() as conn:
        start = "(extract(epoch FROM window_start) * 1000)::bigint"
        columns = f"{start}, currency, revenue, orders, smallest, largest"
        query = sql.SQL(f"SELECT {columns} FROM {{}}").format(warehouse.table("paid_stats"))
        rows = conn.execute(query).fetchall()
    return _totals(rows)


def test_partial_totals_add_up_once_across_batches_and_replays(spark, services, events, tmp_path):
    assert TABLE.fold == (
        ("revenue", "sum"),
        ("orders", "count"),
        ("smallest", "min"),
        ("largest", "max"),
    )
    warehouse = PostgresResource(
        dsn=services.warehouse_dsn, schema_name=f"t_{uuid.uuid4().hex[:10]}"
    )
    first = _stage(events, "offset < 200", "q1", 0, tmp_path)
    second = _stage(events, "offset >= 200", "q1", 1, tmp_path)
    # A replay from offset 100: a new query stages what q1 had staged from there on.
    replayed = _stage(events, "offset >= 100", "q2", 0, tmp_path)
    mapper = partial_totals(SPEC, ORDERS_PIPELINE.format)
    reader = ("paid_stats",)

    def load(*batches: StagedBatch):
        stream = StagedStream("orders_events", spark, batches, readers=reader).map(mapper)
        return Loader(warehouse, "test", keep_staged=True).table(TableLoad(TABLE, (stream,)))

    stats = load(first)
    assert stats.batches_loaded == 1 and stats.rows_in > 0
    assert _stored(warehouse) == _expected(events, "offset < 200")
    # Windows span both batches: the second adds to the first's totals, it does not replace them.
    stats = load(first, second)
    assert (stats.batches_loaded, stats.batches_skipped) == (1, 1)
    everything = _expected(events, "true")
    assert _stored(warehouse) == everything
    assert len(everything) > len(_expected(events, "offset < 200"))
    assert max(r[1] for r in everything.values()) > 1

    stats = load(first, second, replayed)
    assert stats.batches_loaded == 1 and stats.rows_in == 0  # every message was counted already
    assert _stored(warehouse) == everything

    # A replay that reaches past everything counted: only the messages past it count.
    new = events.where("offset < 200").withColumn("offset", F.col("offset") + 10_000)
    load(
        first, second, replayed, _stage(events.unionByName(new), "offset >= 150", "q3", 0, tmp_path)
    )
    assert _stored(warehouse) == _expected(events.unionByName(new), "true")


def test_a_replay_loaded_before_the_batches_it_repeats_counts_each_message_once(
    spark, services, events, tmp_path
):
    """The ledger's ranges, not a high-water mark: a replay from offset 100 staged under a new
    query can reach the load first; offsets 0-99 of the batches after it must still count."""
    warehouse = PostgresResource(
        dsn=services.warehouse_dsn, schema_name=f"t_{uuid.uuid4().hex[:10]}"
    )
    replayed = _stage(events, "offset >= 100", "q0", 0, tmp_path)
    first = _stage(events, "offset < 200", "q1", 0, tmp_path)
    second = _stage(events, "offset >= 200", "q1", 1, tmp_path)
    stream = StagedStream("orders_events", spark, (replayed, first, second), readers=("t",))
    stream = stream.map(partial_totals(SPEC, ORDERS_PIPELINE.format))

    stats = Loader(warehouse, "test", keep_staged=True).table(TableLoad(TABLE, (stream,)))

    assert stats.batches_loaded == 3
    assert _stored(warehouse) == _expected(events, "true")
