"""Warehouse tables: their columns, keys, and how an incoming row replaces a stored one.

A `Table` is what the IO manager needs to create and load a PostgreSQL table. The functions below
derive one from a pipeline's declared table and message fields, so the columns, their types and
the keys are written once, in YAML.
"""

from dataclasses import dataclass

import dagster as dg

from kafka_assets.spec import (
    POSITION_COLUMNS,
    ColumnSpec,
    FieldType,
    MeasureSpec,
    PipelineSpec,
    TableSpec,
    parse_type,
)

LEDGER = "_kafka_assets_batches"
"""Per table, the micro-batches already loaded, written in the same transaction as their rows."""


@dataclass(frozen=True)
class Column:
    name: str
    pg_type: str
    description: str = ""


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    newer_than: tuple[str, ...] = ()
    """Upsert only when the incoming row is at least as new by these columns (late events)."""
    offset_columns: tuple[str, str] | None = None
    """(partition, offset) columns, recorded per batch for reconciliation with Kafka."""
    fold: tuple[tuple[str, str], ...] = ()
    """(measure column, count/sum/min/max): each batch's partial totals are combined with the
    stored ones instead of replacing them (an aggregate whose totals the warehouse keeps)."""
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


_PG_SCALARS = {
    "string": "text",
    "int": "integer",
    "long": "bigint",
    "double": "double precision",
    "boolean": "boolean",
    "timestamp": "timestamptz",
    "date": "date",
    "json": "jsonb",
}


def pg_type(ftype: FieldType) -> str:
    if ftype.kind == "decimal":
        return f"numeric({ftype.precision},{ftype.scale})"
    if ftype.is_complex:
        return "jsonb"
    return _PG_SCALARS[ftype.kind]


def _column(name: str, ftype: FieldType, required: bool, description: str = "") -> Column:
    return Column(name, pg_type(ftype) + (" NOT NULL" if required else ""), description)


_POSITION = (
    Column("source_partition", "integer NOT NULL", "Kafka partition of the message"),
    Column("source_offset", "bigint NOT NULL", "Kafka offset of the message"),
)


def row_table(pipeline: PipelineSpec, spec: TableSpec) -> Table:
    """An append table (keyed by Kafka position) or a latest table (upserted by its key)."""
    fields = pipeline.format.fields
    columns = []
    for entry in spec.columns or list(fields):
        if isinstance(entry, ColumnSpec):
            columns.append(
                _column(entry.name, parse_type(entry.type), entry.required, entry.description)
            )
        else:
            f = fields[entry]
            columns.append(_column(entry, f.parsed_type, f.required, f.description))
    if spec.mode == "append":
        return Table(
            name=spec.name,
            columns=(*_POSITION, *columns),
            primary_key=POSITION_COLUMNS,
            offset_columns=POSITION_COLUMNS,
            description=spec.asset.description or "Every valid message, keyed by Kafka position.",
        )
    key = tuple(spec.key or [pipeline.format.key])
    default_order = [pipeline.format.event_time] if pipeline.format.event_time else []
    return Table(
        name=spec.name,
        columns=(*columns, *_POSITION),
        primary_key=key,
        newer_than=tuple(spec.order_by or [*default_order, "source_offset"]),
        offset_columns=POSITION_COLUMNS,
        description=spec.asset.description
        or f"Latest row per {', '.join(key)}: an older message never overwrites a newer one.",
    )


def _measure_type(measure: MeasureSpec, pipeline: PipelineSpec) -> str:
    if measure.agg in ("count", "approx_distinct"):
        return "bigint NOT NULL"
    ftype = pipeline.format.fields[measure.column].parsed_type if measure.column else None
    if ftype is None:
        raise ValueError(f"measure {measure.name!r} needs a column")
    if measure.agg == "avg":
        return "numeric" if ftype.kind == "decimal" else "double precision"
    if measure.agg == "sum":
        return {"int": "bigint", "long": "bigint", "decimal": "numeric"}.get(
            ftype.kind, "double precision"
        )
    return pg_type(ftype)


def aggregate_table(pipeline: PipelineSpec, spec: TableSpec) -> Table:
    """One row per event-time window and group: running totals, replaced as they grow in a
    Spark stream's state, or added to batch by batch when the warehouse keeps them."""
    fields = pipeline.format.fields
    group_by = list(spec.group_by or ())
    columns = [
        Column("window_start", "timestamptz NOT NULL"),
        Column("window_end", "timestamptz NOT NULL"),
        *(_column(g, fields[g].parsed_type, True, fields[g].description) for g in group_by),
        *(Column(m.name, _measure_type(m, pipeline)) for m in spec.measures or ()),
    ]
    return Table(
        name=spec.name,
        columns=tuple(columns),
        primary_key=("window_start", *group_by),
        fold=tuple((m.name, m.agg) for m in spec.measures or ()) if spec.folds else (),
        description=spec.asset.description or f"Aggregates of {pipeline.topic.name} per window.",
    )


def table_for(pipeline: PipelineSpec, spec: TableSpec) -> Table:
    return (
        aggregate_table(pipeline, spec) if spec.mode == "aggregate" else row_table(pipeline, spec)
    )


def quarantine_table(name: str) -> Table:
    return Table(
        name=name,
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
