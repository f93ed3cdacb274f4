"""The warehouse tables: their columns, keys, and how an incoming row replaces a stored one."""

from dataclasses import dataclass

import dagster as dg


@dataclass(frozen=True)
class Column:
    name: str
    pg_type: str
    description: str = ""


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    newer_than: tuple[str, ...] = ()
    """Upsert only when the incoming row is at least as new by these columns (late events)."""
    offset_columns: tuple[str, str] | None = None
    """(partition, offset) columns, recorded per batch for reconciliation with Kafka."""
    description: str = ""

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column_schema(self) -> dg.TableSchema:
        return dg.TableSchema(
            columns=[
                dg.TableColumn(c.name, c.pg_type, description=c.description or None)
                for c in self.columns
            ]
        )


ORDERS = TableSpec(
    name="orders",
    description="Latest state per order by event time: a late event never overwrites a newer one.",
    columns=(
        Column("order_id", "text NOT NULL"),
        Column("status", "text NOT NULL"),
        Column("customer_id", "text NOT NULL"),
        Column("items", "jsonb NOT NULL"),
        Column("amount", "numeric(14,2) NOT NULL"),
        Column("currency", "text NOT NULL"),
        Column("event_time", "timestamptz NOT NULL"),
        Column("event_id", "text NOT NULL"),
        Column("source_partition", "integer NOT NULL", "Kafka partition of the latest event"),
        Column("source_offset", "bigint NOT NULL", "Kafka offset of the latest event"),
    ),
    primary_key=("order_id",),
    newer_than=("event_time", "source_offset"),
    offset_columns=("source_partition", "source_offset"),
)

PAGE_VIEWS = TableSpec(
    name="page_views",
    description="Every valid page view, keyed by its Kafka position.",
    columns=(
        Column("source_partition", "integer NOT NULL"),
        Column("source_offset", "bigint NOT NULL"),
        Column("event_id", "text NOT NULL"),
        Column("session_id", "text NOT NULL"),
        Column("user_id", "text"),
        Column("page", "text NOT NULL"),
        Column("referrer", "text"),
        Column("event_time", "timestamptz NOT NULL"),
    ),
    primary_key=("source_partition", "source_offset"),
    offset_columns=("source_partition", "source_offset"),
)

REVENUE_PER_MINUTE = TableSpec(
    name="revenue_per_minute",
    description="Paid revenue per one-minute event-time window and currency (running totals).",
    columns=(
        Column("window_start", "timestamptz NOT NULL"),
        Column("window_end", "timestamptz NOT NULL"),
        Column("currency", "text NOT NULL"),
        Column("revenue", "numeric(16,2) NOT NULL"),
        Column("orders", "bigint NOT NULL"),
    ),
    primary_key=("window_start", "currency"),
)

PAGE_VIEW_COUNTS = TableSpec(
    name="page_view_counts",
    description="Page views and approximate distinct sessions per one-minute window and page.",
    columns=(
        Column("window_start", "timestamptz NOT NULL"),
        Column("window_end", "timestamptz NOT NULL"),
        Column("page", "text NOT NULL"),
        Column("views", "bigint NOT NULL"),
        Column("sessions", "bigint NOT NULL"),
    ),
    primary_key=("window_start", "page"),
)

QUARANTINE = TableSpec(
    name="quarantine",
    description="Every rejected message, with its Kafka position, raw bytes and the reason.",
    columns=(
        Column("topic", "text NOT NULL"),
        Column("source_partition", "integer NOT NULL"),
        Column("source_offset", "bigint NOT NULL"),
        Column("key", "text"),
        Column("raw_value", "bytea"),
        Column("reason", "text NOT NULL"),
        Column("kafka_timestamp", "timestamptz"),
    ),
    primary_key=("topic", "source_partition", "source_offset"),
    offset_columns=("source_partition", "source_offset"),
)

LEDGER = "_kafka_assets_batches"
"""Per table, the micro-batches already loaded, written in the same transaction as their rows."""
