"""What one pipeline YAML declares: a topic, its message format, and the tables it feeds.

These models are the whole user-facing vocabulary of a pipeline. They validate on their own (no
Spark, no connection), so `dg check defs` can name the file and field that is wrong. Builders in
`kafka_assets.kafka`, `kafka_assets.spark` and `kafka_assets.warehouse` turn them into assets.
"""

import re
from dataclasses import dataclass
from typing import Literal

import dagster as dg
from pydantic import model_validator

SCALAR_TYPES = ("string", "int", "long", "double", "boolean", "timestamp", "date", "json")
"""`json` keeps any JSON value (object, array, scalar) as text; it lands as PostgreSQL jsonb."""

POSITION_COLUMNS = ("source_partition", "source_offset")
"""Every row-level table carries the Kafka position of the message it came from."""

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


# -- field types ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldType:
    """A parsed type string: a scalar, `decimal(p,s)`, `array<T>` or `struct<a: T, ...>`."""

    kind: str
    """One of SCALAR_TYPES, or "decimal", "array", "struct"."""
    precision: int = 0
    scale: int = 0
    element: "FieldType | None" = None
    fields: tuple[tuple[str, "FieldType"], ...] = ()

    @property
    def is_complex(self) -> bool:
        return self.kind in ("array", "struct")

    @property
    def is_numeric(self) -> bool:
        return self.kind in ("int", "long", "double", "decimal")

    def __str__(self) -> str:
        if self.kind == "decimal":
            return f"decimal({self.precision},{self.scale})"
        if self.kind == "array":
            return f"array<{self.element}>"
        if self.kind == "struct":
            return "struct<" + ", ".join(f"{n}: {t}" for n, t in self.fields) + ">"
        return self.kind


_ALIASES = {
    "integer": "int",
    "bigint": "long",
    "float": "double",
    "bool": "boolean",
    "str": "string",
}


def parse_type(text: str) -> FieldType:
    """Parse a type string, raising ValueError that quotes the part that is wrong."""
    parsed, rest = _parse(text.strip(), text)
    if rest.strip():
        raise ValueError(f"unexpected {rest.strip()!r} after {parsed} in type {text!r}")
    return parsed


def _parse(s: str, whole: str) -> tuple[FieldType, str]:
    m = re.match(r"\s*([A-Za-z]+)\s*", s)
    if not m:
        raise ValueError(f"expected a type name at {s!r} in type {whole!r}")
    name, rest = _ALIASES.get(m.group(1).lower(), m.group(1).lower()), s[m.end() :]
    if name == "decimal":
        d = re.match(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*", rest)
        if not d:
            raise ValueError(f"decimal needs (precision,scale), e.g. decimal(14,2), in {whole!r}")
        precision, scale = int(d.group(1)), int(d.group(2))
        if not 0 < precision <= 38 or scale > precision:
            raise ValueError(f"decimal({precision},{scale}) is out of range in {whole!r}")
        return FieldType("decimal", precision, scale), rest[d.end() :]
    if name == "array":
        if not rest.startswith("<"):
            raise ValueError(f"array needs an element type, e.g. array<string>, in {whole!r}")
        element, rest = _parse(rest[1:], whole)
        if not rest.lstrip().startswith(">"):
            raise ValueError(f"missing '>' closing array<{element}> in {whole!r}")
        return FieldType("array", element=element), rest.lstrip()[1:]
    if name == "struct":
        if not rest.startswith("<"):
            raise ValueError(f"struct needs fields, e.g. struct<a: int>, in {whole!r}")
        rest = rest[1:]
        fields: list[tuple[str, FieldType]] = []
        while True:
            f = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*", rest)
            if not f:
                raise ValueError(f"expected 'name: type' at {rest!r} in {whole!r}")
            ftype, rest = _parse(rest[f.end() :], whole)
            fields.append((f.group(1), ftype))
            rest = rest.lstrip()
            if rest.startswith(","):
                rest = rest[1:]
                continue
            if rest.startswith(">"):
                return FieldType("struct", fields=tuple(fields)), rest[1:]
            raise ValueError(f"expected ',' or '>' at {rest!r} in {whole!r}")
    if name not in SCALAR_TYPES:
        known = ", ".join([*SCALAR_TYPES, "decimal(p,s)", "array<T>", "struct<a: T, ...>"])
        raise ValueError(f"unknown type {m.group(1)!r} in {whole!r}; known types: {known}")
    return FieldType(name), rest


# -- the YAML vocabulary --------------------------------------------------------------------------


class AssetOptions(dg.Model):
    """How one asset shows in Dagster; every field has a default derived from the pipeline."""

    key: str | None = None
    """Asset key as a slash-separated path, e.g. `kafka/orders`."""
    group: str | None = None
    description: str | None = None
    kinds: list[str] | None = None


class TopicSpec(dg.Model):
    name: str
    partitions: int = 1
    """A minimum: an operator may add partitions outside the project, which is reported."""
    replication_factor: int = 1
    retention_ms: int = 7 * 24 * 3600 * 1000
    """-1 keeps messages forever."""
    cleanup_policy: Literal["delete", "compact", "compact,delete"] = "delete"
    asset: AssetOptions = AssetOptions()

    @model_validator(mode="after")
    def _valid_name(self) -> "TopicSpec":
        for name in ("partitions", "replication_factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"topic {self.name!r}: {name} must be at least 1")
        if self.retention_ms < -1:
            raise ValueError(f"topic {self.name!r}: retention_ms must be -1 (forever) or more")
        if not _TOPIC.match(self.name):
            raise ValueError(
                f"topic name {self.name!r} is not a legal Kafka topic name "
                "(letters, digits, '.', '_', '-'; at most 249 characters)"
            )
        return self

    def config(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy}


class FieldSpec(dg.Model):
    type: str = "string"
    """string, int, long, double, boolean, timestamp, date, json, decimal(p,s), array<T>,
    struct<a: T, ...>. A `timestamp` arrives as an ISO-8601 string."""
    required: bool = False
    allowed: list[str | int | float | bool] | None = None
    """When set, any other value is quarantined (e.g. an order status)."""
    description: str = ""

    @property
    def parsed_type(self) -> FieldType:
        return parse_type(self.type)


class FormatSpec(dg.Model):
    """How a message's value is read. Anything that does not fit is quarantined, never dropped."""

    type: Literal["json"] = "json"
    fields: dict[str, FieldSpec]
    key: str | None = None
    """The field that the producer uses as the Kafka message key (documentation, and the default
    key of `latest` tables)."""
    event_time: str | None = None
    """The `timestamp` field windows and watermarks use."""

    @model_validator(mode="after")
    def _consistent(self) -> "FormatSpec":
        if not self.fields:
            raise ValueError("format.fields must declare at least one field")
        for name, spec in self.fields.items():
            if not _IDENT.match(name):
                raise ValueError(f"field name {name!r} must be a plain identifier")
            if name in (*POSITION_COLUMNS, "error", "raw_value", "kafka_timestamp", "key"):
                raise ValueError(f"field name {name!r} is reserved for Kafka metadata columns")
            try:
                ftype = spec.parsed_type
            except ValueError as exc:
                raise ValueError(f"field {name!r}: {exc}") from None
            if spec.allowed is not None and (ftype.is_complex or ftype.kind == "json"):
                raise ValueError(f"field {name!r}: `allowed` needs a scalar type, not {ftype}")
        if self.key is not None and self.key not in self.fields:
            raise ValueError(f"format.key {self.key!r} is not one of the declared fields")
        if self.event_time is not None:
            field = self.fields.get(self.event_time)
            if field is None or field.parsed_type.kind != "timestamp":
                raise ValueError(
                    f"format.event_time {self.event_time!r} must name a declared field of type "
                    "timestamp"
                )
        return self


class ColumnSpec(dg.Model):
    """A column that a custom transform adds to a table (declared fields need no entry)."""

    name: str
    type: str
    required: bool = False
    description: str = ""


class TransformSpec(dg.Model):
    """A Python function for what YAML cannot express: `DataFrame -> DataFrame` on valid rows."""

    function: str
    """Dotted path, e.g. `my_project.transforms.add_vat`."""


class WindowSpec(dg.Model):
    size: str = "1 minute"
    """An event-time tumbling window, in Spark interval syntax."""
    watermark: str = "10 minutes"
    """With `totals: stream`: how late an event may arrive and still count; later ones are
    counted as dropped. Totals kept in the warehouse take events of any lateness."""


class FreshnessSpec(dg.Model):
    """When the UI shows a table as late: minutes since its last materialization."""

    warn_after_minutes: int = 15
    fail_after_minutes: int = 60


class MeasureSpec(dg.Model):
    name: str
    agg: Literal["count", "sum", "min", "max", "avg", "approx_distinct"]
    column: str | None = None
    """Not needed for `count`."""


FOLDABLE = frozenset({"count", "sum", "min", "max"})
"""Measures whose totals grow by combining a micro-batch's partial totals with the stored ones."""


class TableSpec(dg.Model):
    name: str
    """The PostgreSQL table, in the warehouse schema; unique across all pipelines."""
    mode: Literal["append", "latest", "aggregate"]
    columns: list[str | ColumnSpec] | None = None
    """append / latest: which fields to keep (default: all declared fields)."""
    key: list[str] | None = None
    """latest: the key to upsert by (default: format.key)."""
    order_by: list[str] | None = None
    """latest: a row replaces the stored one only if not older by these columns (default:
    format.event_time, then source_offset)."""
    where: str | None = None
    """A Spark SQL condition on the valid rows, e.g. `status = 'paid'`."""
    window: WindowSpec | None = None
    """aggregate: the event-time window."""
    group_by: list[str] | None = None
    measures: list[MeasureSpec] | None = None
    transform: TransformSpec | None = None
    totals: Literal["auto", "warehouse", "stream"] = "auto"
    """aggregate: where the running totals live. `warehouse`: each micro-batch of the parsing
    stream adds its partial totals to the table, so the topic is read once and late events
    always count (count, sum, min and max only). `stream`: a Spark stream of its own keeps them
    in its state, with the window's watermark. `auto`: warehouse when every measure allows."""
    freshness: FreshnessSpec | None = FreshnessSpec()
    """null: no freshness policy (e.g. a table fed only now and then)."""
    stream: AssetOptions = AssetOptions()
    """aggregate with `totals: stream`: the Spark stream that computes it."""
    asset: AssetOptions = AssetOptions()

    @model_validator(mode="after")
    def _mode_fields(self) -> "TableSpec":
        if not _IDENT.match(self.name):
            raise ValueError(f"table name {self.name!r} must be a plain identifier")
        if self.mode == "aggregate":
            if not self.measures:
                raise ValueError(f"table {self.name!r}: an aggregate needs `measures`")
            if self.columns or self.key or self.order_by:
                raise ValueError(
                    f"table {self.name!r}: columns/key/order_by do not apply to an aggregate; "
                    "use group_by and measures"
                )
        else:
            for name in ("window", "group_by", "measures"):
                if getattr(self, name) is not None:
                    raise ValueError(f"table {self.name!r}: `{name}` is only for mode aggregate")
            if self.totals != "auto":
                raise ValueError(f"table {self.name!r}: `totals` is only for mode aggregate")
            if self.mode == "append" and (self.key or self.order_by):
                raise ValueError(
                    f"table {self.name!r}: an append table is keyed by Kafka position; "
                    "key/order_by are for mode latest"
                )
        if self.freshness and not 0 < self.freshness.warn_after_minutes <= (
            self.freshness.fail_after_minutes
        ):
            raise ValueError(
                f"table {self.name!r}: freshness needs 0 < warn_after_minutes <= fail_after_minutes"
            )
        for m in self.measures or ():
            if m.agg != "count" and not m.column:
                raise ValueError(f"table {self.name!r}: measure {m.name!r} ({m.agg}) needs column")
            if self.totals == "warehouse" and m.agg not in FOLDABLE:
                raise ValueError(
                    f"table {self.name!r}: measure {m.name!r} ({m.agg}) cannot be added up batch "
                    f"by batch; totals: warehouse takes {', '.join(sorted(FOLDABLE))}, or use "
                    "totals: stream"
                )
        return self

    @property
    def folds(self) -> bool:
        """An aggregate whose totals the warehouse keeps, from the parsing stream's batches."""
        if self.mode != "aggregate" or self.totals == "stream":
            return False
        return all(m.agg in FOLDABLE for m in self.measures or ())


class QuarantineSpec(dg.Model):
    table: str = "quarantine"
    """Shared by every pipeline that names it; one asset collects them all."""

    @model_validator(mode="after")
    def _plain_name(self) -> "QuarantineSpec":
        if not _IDENT.match(self.table):
            raise ValueError(f"quarantine table name {self.table!r} must be a plain identifier")
        return self


class PipelineSpec(dg.Model):
    """One topic and everything downstream of it."""

    topic: TopicSpec
    format: FormatSpec
    tables: list[TableSpec]
    quarantine: QuarantineSpec = QuarantineSpec()
    stream: AssetOptions = AssetOptions()
    """The events stream: every message parsed, valid or not."""

    @model_validator(mode="after")
    def _references(self) -> "PipelineSpec":
        fields = self.format.fields
        if not self.tables:
            raise ValueError(f"pipeline of topic {self.topic.name!r} declares no tables")
        names = [t.name for t in self.tables]
        dupes = {n for n in names if names.count(n) > 1} | (set(names) & {self.quarantine.table})
        if dupes:
            raise ValueError(f"table name(s) {sorted(dupes)} used twice in this pipeline")
        for table in self.tables:
            added = {c.name for c in table.columns or () if isinstance(c, ColumnSpec)}
            known = set(fields) | added | set(POSITION_COLUMNS)
            for col in table.columns or ():
                if isinstance(col, str) and col not in fields:
                    raise ValueError(
                        f"table {table.name!r}: column {col!r} is not a declared field; "
                        "declare it under format.fields, or as {name, type} if a transform "
                        "adds it"
                    )
                if isinstance(col, ColumnSpec):
                    try:
                        parse_type(col.type)
                    except ValueError as exc:
                        raise ValueError(
                            f"table {table.name!r}, column {col.name!r}: {exc}"
                        ) from None
            if added and table.transform is None:
                raise ValueError(
                    f"table {table.name!r}: columns {sorted(added)} are not fields, so a "
                    "transform must add them"
                )
            if table.mode == "latest":
                key = table.key or ([self.format.key] if self.format.key else None)
                if not key:
                    raise ValueError(
                        f"table {table.name!r}: a latest table needs `key` (or format.key)"
                    )
                for col in [*key, *(table.order_by or ())]:
                    if col not in known:
                        raise ValueError(
                            f"table {table.name!r}: key/order_by column {col!r} is not a field"
                        )
                for col in key:
                    if col in fields and not fields[col].required:
                        raise ValueError(
                            f"table {table.name!r}: key column {col!r} must be a required field "
                            "(a primary key cannot be null)"
                        )
            if table.mode == "aggregate":
                if self.format.event_time is None:
                    raise ValueError(f"table {table.name!r}: an aggregate needs format.event_time")
                for col in [*(table.group_by or ()), *(m.column for m in table.measures or ())]:
                    if col is not None and col not in known:
                        raise ValueError(
                            f"table {table.name!r}: group_by/measure column {col!r} is not a "
                            "declared field"
                        )
                for col in table.group_by or ():
                    if col in fields and not fields[col].required:
                        raise ValueError(
                            f"table {table.name!r}: group_by column {col!r} must be a required "
                            "field (it is part of the primary key)"
                        )
        return self


# -- change data capture ---------------------------------------------------------------------------

CDC_COLUMNS = ("_cdc_lsn", "_cdc_partition", "_cdc_offset", "_cdc_op", "_cdc_ts_ms")
"""Every mirror row carries the source position of the change it came from."""


class ConnectorSpec(dg.Model):
    """A Debezium PostgreSQL connector in Kafka Connect, reading through an existing publication."""

    name: str
    """The connector's name in Kafka Connect."""
    topic_prefix: str
    """Topics are `<topic_prefix>.<schema>.<table>`, created by the Connect worker."""
    slot_name: str
    """The logical replication slot; it outlives the connector and holds WAL until dropped."""
    publication: str
    heartbeat_table: str | None = None
    """`schema.table` in the publication that Debezium's heartbeat updates, so the slot's
    confirmed position advances while the captured tables are idle."""
    heartbeat_interval_ms: int = 1000
    settings: dict[str, str] = {}
    """More Debezium settings, passed through (never a password: it comes from the worker's
    environment through `${env:SOURCE_CDC_PASSWORD}`)."""

    @model_validator(mode="after")
    def _valid(self) -> "ConnectorSpec":
        if not re.match(r"^[A-Za-z0-9_.-]+$", self.name):
            raise ValueError(f"connector.name {self.name!r}: letters, digits, '_', '.', '-'")
        if not _TOPIC.match(self.topic_prefix):
            raise ValueError(f"connector.topic_prefix {self.topic_prefix!r} is not a topic name")
        if not re.match(r"^[a-z0-9_]{1,63}$", self.slot_name):
            raise ValueError(
                f"connector.slot_name {self.slot_name!r}: PostgreSQL slot names are lower-case "
                "letters, digits and '_' (at most 63)"
            )
        if not _IDENT.match(self.publication):
            raise ValueError(f"connector.publication {self.publication!r} must be an identifier")
        if self.heartbeat_table is not None and not re.match(
            r"^[A-Za-z_]\w*\.[A-Za-z_]\w*$", self.heartbeat_table
        ):
            raise ValueError(
                f"connector.heartbeat_table {self.heartbeat_table!r} must be `schema.table`"
            )
        if self.heartbeat_interval_ms < 100:
            raise ValueError("connector.heartbeat_interval_ms must be at least 100")
        secret = [k for k in self.settings if "password" in k.lower()]
        if secret:
            raise ValueError(
                f"connector.settings {secret}: a password never goes in YAML; the connector "
                "reads it from the worker's environment"
            )
        return self


class DeleteSpec(dg.Model):
    mode: Literal["hard", "soft"] = "hard"
    """hard: the mirror row is deleted; soft: it stays, with `column` set true."""
    column: str | None = None
    """soft: the boolean column marking a deleted row, e.g. `_deleted`."""

    @model_validator(mode="after")
    def _column(self) -> "DeleteSpec":
        if self.mode == "soft" and not self.column:
            raise ValueError("delete.column is required for mode soft, e.g. `_deleted`")
        if self.mode == "hard" and self.column:
            raise ValueError("delete.column is only for mode soft")
        if self.column and not _IDENT.match(self.column):
            raise ValueError(f"delete.column {self.column!r} must be a plain identifier")
        if self.column in CDC_COLUMNS:
            raise ValueError(f"delete.column {self.column!r} is reserved")
        return self


class MirrorSpec(dg.Model):
    """One source table and the warehouse table that mirrors it."""

    name: str
    """The source table, in `source.schema`."""
    table: str
    """The warehouse table; unique across all YAML files."""
    delete: DeleteSpec = DeleteSpec()
    freshness: FreshnessSpec | None = None

    @model_validator(mode="after")
    def _names(self) -> "MirrorSpec":
        for what in ("name", "table"):
            if not _IDENT.match(getattr(self, what)):
                raise ValueError(f"tables.{what} {getattr(self, what)!r} must be an identifier")
        return self


class SourceDatabaseSpec(dg.Model):
    database: str = "legacy"
    """The first part of the source tables' asset keys (the connection is SOURCE_DSN)."""
    schema_name: str = "shop"

    @model_validator(mode="after")
    def _names(self) -> "SourceDatabaseSpec":
        for what in ("database", "schema_name"):
            if not _IDENT.match(getattr(self, what)):
                raise ValueError(f"source.{what} {getattr(self, what)!r} must be an identifier")
        return self


class CdcSourceSpec(dg.Model):
    """A legacy PostgreSQL's tables, captured by Debezium and mirrored in the warehouse."""

    connector: ConnectorSpec
    source: SourceDatabaseSpec = SourceDatabaseSpec()
    tables: list[MirrorSpec]
    quarantine: QuarantineSpec = QuarantineSpec()
    """Changes that do not parse land here with their position and the reason."""

    @model_validator(mode="after")
    def _unique(self) -> "CdcSourceSpec":
        if not self.tables:
            raise ValueError("tables must list at least one source table")
        for attr in ("name", "table"):
            names = [getattr(t, attr) for t in self.tables]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"tables.{attr} {dupes} declared twice")
        if self.quarantine.table in {t.table for t in self.tables}:
            raise ValueError(f"quarantine.table {self.quarantine.table!r} is also a mirror table")
        return self
