"""Warehouse tables as assets: each takes staged stream batches and says which table they fill."""

from collections.abc import Callable, Sequence
from datetime import timedelta

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from kafka_assets.spark.assets import PARSING_STREAM_PRIORITY, PRIORITY_TAG
from kafka_assets.spark.parsing import aggregate
from kafka_assets.spark.staging import StagedStream
from kafka_assets.spec import (
    POSITION_COLUMNS,
    AssetOptions,
    FormatSpec,
    FreshnessSpec,
    TableSpec,
)
from kafka_assets.warehouse.io_manager import TableLoad
from kafka_assets.warehouse.tables import Table

# The tables follow their streams: whenever a stream is materialized (by the offsets sensor or
# by hand), the tables that read it are brought up to date without a click. The automation
# sensor that evaluates this is declared RUNNING in definitions.py.
FOLLOW_STREAMS = dg.AutomationCondition.eager()

# A table loads as soon as its stream is staged, ahead of any stream still to run: new messages
# become queryable first, and the aggregates (streams, and tables adding up totals) after.
TABLE_PRIORITY = PARSING_STREAM_PRIORITY + 1

RowMapper = Callable[[DataFrame], DataFrame]


def table_key(name: str, options: AssetOptions) -> dg.AssetKey:
    if options.key:
        return dg.AssetKey.from_user_string(options.key)
    return dg.AssetKey(["warehouse", name])


def quarantine_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["warehouse", name])


def _position() -> list:
    return [
        F.col("partition").alias(POSITION_COLUMNS[0]),
        F.col("offset").alias(POSITION_COLUMNS[1]),
    ]


def valid_rows(
    table: Table, where: str | None = None, transform: RowMapper | None = None
) -> RowMapper:
    """Parsed events -> the table's rows: valid ones, filtered, transformed, with their position."""

    def _map(df: DataFrame) -> DataFrame:
        df = df.where(F.col("error").isNull()).select("*", *_position())
        if where:
            df = df.where(F.expr(where))
        if transform is not None:
            df = transform(df)
        return df.select(*table.column_names)

    if not where and transform is None:
        # A SQL condition or a Spark function has no Arrow twin; plain validity does.
        _map.arrow = lambda t: _with_position(t.filter(pc.is_null(t["error"]))).select(
            table.column_names
        )
    return _map


def partial_totals(
    spec: TableSpec, fmt: FormatSpec, transform: RowMapper | None = None
) -> RowMapper:
    """Parsed events -> one batch's totals per window and group, which the warehouse adds to
    the stored totals (an aggregate with `totals: warehouse`)."""

    def _map(df: DataFrame) -> DataFrame:
        if transform is not None:
            df = transform(df.where(F.col("error").isNull()))
        return aggregate(df, spec, fmt, watermark=False)

    return _map


def _with_position(table: pa.Table) -> pa.Table:
    """`_position()` over Arrow: the Kafka position under the table's column names."""
    for staged, column in zip(("partition", "offset"), POSITION_COLUMNS, strict=True):
        table = table.append_column(column, table[staged])
    return table


REJECTED = ("topic", *POSITION_COLUMNS, "key", "raw_value", "reason", "kafka_timestamp")


def rejected(df: DataFrame) -> DataFrame:
    return df.where(F.col("error").isNotNull()).select(
        "topic",
        *_position(),
        "key",
        "raw_value",
        F.col("error").alias("reason"),
        "kafka_timestamp",
    )


def _rejected_arrow(table: pa.Table) -> pa.Table:
    table = _with_position(table.filter(pc.is_valid(table["error"])))
    return table.append_column("reason", table["error"]).select(list(REJECTED))


rejected.arrow = _rejected_arrow


def build_table_asset(
    table: Table,
    key: dg.AssetKey,
    sources: dict[str, dg.AssetKey],
    mappers: dict[str, RowMapper | None],
    options: AssetOptions,
    freshness: FreshnessSpec | None = None,
    group: str = "warehouse",
    priority: int = TABLE_PRIORITY,
) -> dg.AssetsDefinition:
    """A table fed by staged streams: `sources` maps an input name to a stream asset key, and
    `mappers` says how that stream's batches become the table's rows (None: as they are)."""

    @dg.asset(
        key=key,
        ins={name: dg.AssetIn(key=stream) for name, stream in sources.items()},
        group_name=options.group or group,
        kinds=set(options.kinds or ["postgres"]),
        io_manager_key="warehouse_io_manager",
        op_tags={PRIORITY_TAG: str(priority)},
        automation_condition=FOLLOW_STREAMS,
        freshness_policy=(
            dg.FreshnessPolicy.time_window(
                fail_window=timedelta(minutes=freshness.fail_after_minutes),
                warn_window=timedelta(minutes=freshness.warn_after_minutes),
            )
            if freshness
            else None
        ),
        description=table.description,
        metadata={"dagster/column_schema": table.column_schema(), "kafka_assets/table": table.name},
    )
    def _table(**streams: StagedStream) -> TableLoad:
        staged = []
        for name in sources:
            mapper = mappers.get(name)
            staged.append(streams[name].map(mapper) if mapper else streams[name])
        return TableLoad(table, tuple(staged))

    return _table


def build_quarantine_asset(
    table: Table, streams: Sequence[dg.AssetKey], group: str = "warehouse"
) -> dg.AssetsDefinition:
    """One quarantine table for every pipeline that names it: its inputs follow the YAML."""
    sources = {"__".join(k.path): k for k in streams}
    return build_table_asset(
        table,
        quarantine_key(table.name),
        sources,
        {name: rejected for name in sources},
        AssetOptions(),
        group=group,
    )
