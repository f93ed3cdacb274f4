"""Warehouse tables as assets: each takes staged stream batches and says which table they fill."""

import dagster as dg
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from kafka_assets.spark.assets import stream_key
from kafka_assets.spark.staging import StagedStream
from kafka_assets.warehouse.io_manager import TableLoad
from kafka_assets.warehouse.tables import (
    ORDERS,
    PAGE_VIEW_COUNTS,
    PAGE_VIEWS,
    QUARANTINE,
    REVENUE_PER_MINUTE,
    TableSpec,
)

# The tables follow their streams: whenever a stream is materialized (by the offsets sensor or
# by hand), the tables that read it are brought up to date without a click.
FOLLOW_STREAMS = dg.AutomationCondition.eager()


def warehouse_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["warehouse", name])


def _position(df: DataFrame) -> list:
    return [F.col("partition").alias("source_partition"), F.col("offset").alias("source_offset")]


def valid_orders(df: DataFrame) -> DataFrame:
    return df.where(F.col("error").isNull()).select(
        "order_id",
        "status",
        "customer_id",
        "items",
        "amount",
        "currency",
        "event_time",
        "event_id",
        *_position(df),
    )


def valid_page_views(df: DataFrame) -> DataFrame:
    return df.where(F.col("error").isNull()).select(
        *_position(df), "event_id", "session_id", "user_id", "page", "referrer", "event_time"
    )


def rejected(df: DataFrame) -> DataFrame:
    return df.where(F.col("error").isNotNull()).select(
        "topic",
        *_position(df),
        "key",
        "raw_value",
        F.col("error").alias("reason"),
        "kafka_timestamp",
    )


def _table_asset(spec: TableSpec, **ins: str):
    return dg.asset(
        key=warehouse_key(spec.name),
        ins={arg: dg.AssetIn(key=stream_key(stream)) for arg, stream in ins.items()},
        group_name="warehouse",
        kinds={"postgres"},
        io_manager_key="warehouse_io_manager",
        automation_condition=FOLLOW_STREAMS,
        description=spec.description,
        metadata={"dagster/column_schema": spec.column_schema()},
    )


@_table_asset(ORDERS, orders_events="orders_events")
def orders(orders_events: StagedStream) -> TableLoad:
    return TableLoad(ORDERS, (orders_events.map(valid_orders),))


@_table_asset(PAGE_VIEWS, page_views_events="page_views_events")
def page_views(page_views_events: StagedStream) -> TableLoad:
    return TableLoad(PAGE_VIEWS, (page_views_events.map(valid_page_views),))


@_table_asset(QUARANTINE, orders_events="orders_events", page_views_events="page_views_events")
def quarantine(orders_events: StagedStream, page_views_events: StagedStream) -> TableLoad:
    return TableLoad(QUARANTINE, (orders_events.map(rejected), page_views_events.map(rejected)))


@_table_asset(REVENUE_PER_MINUTE, revenue_per_minute="revenue_per_minute")
def revenue_per_minute(revenue_per_minute: StagedStream) -> TableLoad:
    return TableLoad(REVENUE_PER_MINUTE, (revenue_per_minute,))


@_table_asset(PAGE_VIEW_COUNTS, page_view_counts="page_view_counts")
def page_view_counts(page_view_counts: StagedStream) -> TableLoad:
    return TableLoad(PAGE_VIEW_COUNTS, (page_view_counts,))


warehouse_assets = [orders, page_views, quarantine, revenue_per_minute, page_view_counts]

# Which event stream feeds which tables, for reconciliation against Kafka offsets.
RECONCILED = {
    "orders_events": (ORDERS, QUARANTINE),
    "page_views_events": (PAGE_VIEWS, QUARANTINE),
}
