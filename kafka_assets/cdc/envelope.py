"""Debezium change events -> typed rows, with the types taken from the events' own schema.

The Connect JSON converter (schemas enabled) puts each message's schema beside its payload. A
stream run samples the newest messages of its topic, maps their Connect schema to a Spark schema
(`connect_fields`), and parses every message's payload against it. A message that carries a
column the sample did not have (a column added in the source while the run started) fails the
run instead of losing that column: the next run samples again and sees it. A message that is not
a Debezium envelope gets an `error` and goes to the quarantine; a tombstone (null value, which
follows every delete) is kept and marked, never an error.
"""

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from kafka_assets.spec import CDC_COLUMNS

OPS = ("c", "u", "d", "r")
"""create, update, delete, and r: a row read by the initial snapshot."""


class SchemaError(ValueError):
    """A Connect schema this project cannot map; the message names the field."""


@dataclass(frozen=True)
class FieldMapping:
    """How one column travels: read from JSON as `wire`, then converted to `spark`."""

    name: str
    wire: T.DataType
    spark: T.DataType
    convert: Callable[[Column], Column] | None = None

    def column(self, value: Column) -> Column:
        return (self.convert(value) if self.convert else value).cast(self.spark)

    @property
    def pg_type(self) -> str:
        return pg_type(self.spark)


_PRIMITIVES: dict[str, T.DataType] = {
    "int8": T.ShortType(),
    "int16": T.ShortType(),
    "int32": T.IntegerType(),
    "int64": T.LongType(),
    "float32": T.FloatType(),
    "float64": T.DoubleType(),
    "boolean": T.BooleanType(),
    "string": T.StringType(),
    # The JSON converter writes bytes as base64 text; kept as that text.
    "bytes": T.StringType(),
}


def _days(c: Column) -> Column:
    return F.date_from_unix_date(c)


def _millis(c: Column) -> Column:
    return F.timestamp_millis(c)


def _micros(c: Column) -> Column:
    return F.timestamp_micros(c)


def _nanos(c: Column) -> Column:
    return F.timestamp_micros(F.floor(c / 1000))


# Debezium's and Connect's logical types: (wire type, Spark type, conversion).
_LOGICAL: dict[str, tuple[T.DataType, T.DataType, Callable[[Column], Column] | None]] = {
    "io.debezium.time.Date": (T.IntegerType(), T.DateType(), _days),
    "org.apache.kafka.connect.data.Date": (T.IntegerType(), T.DateType(), _days),
    "io.debezium.time.Timestamp": (T.LongType(), T.TimestampType(), _millis),
    "org.apache.kafka.connect.data.Timestamp": (T.LongType(), T.TimestampType(), _millis),
    "io.debezium.time.MicroTimestamp": (T.LongType(), T.TimestampType(), _micros),
    "io.debezium.time.NanoTimestamp": (T.LongType(), T.TimestampType(), _nanos),
    "io.debezium.time.ZonedTimestamp": (T.StringType(), T.TimestampType(), None),
}


def connect_field(schema: Mapping) -> FieldMapping:
    """One field of a Connect struct schema -> its mapping; SchemaError names what is wrong."""
    name = schema.get("field", "?")
    ctype, logical = schema.get("type"), schema.get("name")
    if logical in _LOGICAL:
        wire, spark, convert = _LOGICAL[logical]
        return FieldMapping(name, wire, spark, convert)
    if logical in (
        "org.apache.kafka.connect.data.Decimal",
        "io.debezium.data.VariableScaleDecimal",
    ):
        raise SchemaError(
            f"field {name!r} is a binary decimal ({logical}); the connector must run with "
            "decimal.handling.mode=string"
        )
    if ctype == "string":
        params = schema.get("parameters") or {}
        if params.get("__debezium.source.column.type", "").upper() in ("NUMERIC", "DECIMAL"):
            precision = int(params.get("__debezium.source.column.length") or 0)
            scale = int(params.get("__debezium.source.column.scale") or 0)
            if 0 < precision <= 38 and 0 <= scale <= precision:
                return FieldMapping(name, T.StringType(), T.DecimalType(precision, scale))
        return FieldMapping(name, T.StringType(), T.StringType())
    if ctype in _PRIMITIVES:
        return FieldMapping(name, _PRIMITIVES[ctype], _PRIMITIVES[ctype])
    if ctype in ("struct", "array", "map"):
        # Nested values (rare in a relational source) are kept as their JSON text.
        return FieldMapping(name, T.StringType(), T.StringType())
    raise SchemaError(f"field {name!r} has Connect type {ctype!r}, which has no mapping")


def connect_fields(struct_schema: Mapping) -> list[FieldMapping]:
    """A Connect struct schema (a row's `after`, or a key) -> one mapping per field."""
    if struct_schema.get("type") != "struct":
        raise SchemaError(f"expected a struct schema, got {struct_schema.get('type')!r}")
    return [connect_field(f) for f in struct_schema.get("fields") or ()]


def row_schema(envelope_schema: Mapping) -> Mapping | None:
    """The row struct (`after`, else `before`) inside a Debezium envelope's value schema."""
    fields = {f.get("field"): f for f in envelope_schema.get("fields") or ()}
    return fields.get("after") or fields.get("before")


def merge_fields(older: list[FieldMapping], newer: list[FieldMapping]) -> list[FieldMapping]:
    """Columns of both, in first-seen order; the newer mapping wins for a column in both."""
    by_name = {f.name: f for f in older}
    order = [f.name for f in older]
    for f in newer:
        if f.name not in by_name:
            order.append(f.name)
        by_name[f.name] = f
    return [by_name[n] for n in order]


@dataclass(frozen=True)
class EnvelopeSchema:
    """What a stream run parses with: the key's fields and the row's fields."""

    key: tuple[FieldMapping, ...]
    row: tuple[FieldMapping, ...]

    @classmethod
    def from_messages(
        cls, messages: Sequence[tuple[bytes | None, bytes | None]]
    ) -> "EnvelopeSchema":
        """From (key, value) pairs, oldest first: the union of their rows' fields."""
        key: list[FieldMapping] = []
        row: list[FieldMapping] = []
        for raw_key, raw_value in messages:
            if raw_key and not key:
                doc = _json(raw_key)
                if isinstance(doc, dict) and isinstance(doc.get("schema"), dict):
                    key = connect_fields(doc["schema"])
            doc = _json(raw_value) if raw_value else None
            if isinstance(doc, dict) and isinstance(doc.get("schema"), dict):
                found = row_schema(doc["schema"])
                if found:
                    row = merge_fields(row, connect_fields(found))
        return cls(tuple(key), tuple(row))

    def spark_row(self, wire: bool = True) -> T.StructType:
        return T.StructType(
            [T.StructField(f.name, f.wire if wire else f.spark, True) for f in self.row]
        )


def _json(raw: bytes | None):
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def sample_messages(
    client_config: Mapping[str, str], topic: str, per_partition: int = 20, timeout_s: float = 15.0
) -> list[tuple[bytes | None, bytes | None]]:
    """The newest `per_partition` messages of each partition of `topic` (none if it is missing)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            **client_config,
            "group.id": "kafka-assets-schema-sample",
            "enable.auto.commit": False,
            "log_level": 4,
        }
    )
    out: list[tuple[bytes | None, bytes | None]] = []
    try:
        md = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if md is None or md.error is not None:
            return []
        wanted: dict[int, int] = {}
        assign = []
        for p in md.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if high > low:
                wanted[p] = high
                assign.append(TopicPartition(topic, p, max(low, high - per_partition)))
        if not assign:
            return []
        consumer.assign(assign)
        deadline = time.monotonic() + timeout_s
        while wanted and time.monotonic() < deadline:
            for msg in consumer.consume(100, timeout=0.5):
                if msg.error() is not None:
                    continue
                out.append((msg.key(), msg.value()))
                if msg.offset() + 1 >= wanted.get(msg.partition(), 0):
                    wanted.pop(msg.partition(), None)
    finally:
        consumer.close()
    return out


def _names_in(schema_doc: Column, which: str) -> Column:
    """The field names of the envelope's `which` struct, read from the message's own schema."""
    fields = F.filter(schema_doc["fields"], lambda f: f["field"] == which)
    return F.transform(F.coalesce(fields[0]["fields"], F.array()), lambda f: f["field"])


_SCHEMA_DOC = T.StructType(
    [
        T.StructField(
            "schema",
            T.StructType(
                [
                    T.StructField(
                        "fields",
                        T.ArrayType(
                            T.StructType(
                                [
                                    T.StructField("field", T.StringType()),
                                    T.StructField(
                                        "fields",
                                        T.ArrayType(
                                            T.StructType([T.StructField("field", T.StringType())])
                                        ),
                                    ),
                                ]
                            )
                        ),
                    )
                ]
            ),
        )
    ]
)


def parse_envelopes(raw: DataFrame, schema: EnvelopeSchema, stream: str) -> DataFrame:
    """Kafka rows -> one row per message: op, position, key, before and after, or an error."""
    row = schema.spark_row()
    payload = T.StructType(
        [
            T.StructField("before", row),
            T.StructField("after", row),
            T.StructField(
                "source",
                T.StructType(
                    [
                        T.StructField("lsn", T.LongType()),
                        T.StructField("ts_ms", T.LongType()),
                        T.StructField("txId", T.LongType()),
                    ]
                ),
            ),
            T.StructField("op", T.StringType()),
            T.StructField("ts_ms", T.LongType()),
        ]
    )
    key = T.StructType([T.StructField(f.name, f.wire) for f in schema.key])
    text = F.col("value").cast("string")
    df = raw.select(
        "topic",
        "partition",
        "offset",
        F.col("timestamp").alias("kafka_timestamp"),
        F.col("key").cast("string").alias("key"),
        "value",
        F.from_json(text, T.StructType([T.StructField("payload", payload)])).alias("_v"),
        F.from_json(F.col("key").cast("string"), T.StructType([T.StructField("payload", key)]))
        .getField("payload")
        .alias("_k"),
        F.from_json(text, _SCHEMA_DOC).getField("schema").alias("_s"),
    )
    p = F.col("_v.payload")
    known = F.array(*(F.lit(f.name) for f in schema.row))
    unknown = F.array_except(_names_in(F.col("_s"), "after"), known)
    tombstone = F.col("value").isNull()
    checks = [
        F.when(
            ~tombstone & (F.length("value") == 0), F.lit("empty message value (not a tombstone)")
        ),
        F.when(~tombstone & p.isNull(), F.lit("not a Debezium change event (invalid JSON?)")),
        F.when(
            ~tombstone & ~p["op"].isin(*OPS),
            F.concat(F.lit("unsupported op: "), F.coalesce(p["op"], F.lit("null"))),
        ),
        F.when(
            ~tombstone & p["op"].isin("c", "u", "r") & p["after"].isNull(),
            F.concat(F.lit("op "), p["op"], F.lit(" without `after`")),
        ),
        F.when(
            ~tombstone & (p["op"] == "d") & p["before"].isNull() & F.col("_k").isNull(),
            F.lit("delete without `before` or key"),
        ),
        F.when(
            F.col("key").isNotNull() & F.col("_k").isNull(),
            F.lit("message key is not a Debezium key"),
        ),
    ]
    error = F.coalesce(*checks)
    # Columns the run's schema does not know: fail the run (the next one samples again) rather
    # than drop them. Only valid messages are checked; invalid ones are quarantined.
    drift = F.when(
        error.isNull() & ~tombstone & (F.size(unknown) > 0),
        F.raise_error(
            F.concat(
                F.lit(f"stream {stream}: offset "),
                F.col("offset").cast("string"),
                F.lit(" of partition "),
                F.col("partition").cast("string"),
                F.lit(" has column(s) "),
                F.array_join(unknown, ", "),
                F.lit(" not in the schema sampled at the start of this run; the next run "),
                F.lit("samples the topic again and adds them"),
            )
        ),
    )
    typed_row = [
        (name, T.StructType([T.StructField(f.name, f.spark) for f in schema.row]))
        for name in ("before", "after")
    ]
    return df.select(
        "topic",
        "partition",
        "offset",
        "kafka_timestamp",
        "key",
        tombstone.alias("tombstone"),
        p["op"].alias("op"),
        p["source"]["lsn"].alias("lsn"),
        F.coalesce(p["source"]["ts_ms"], p["ts_ms"]).alias("ts_ms"),
        p["source"]["txId"].alias("tx_id"),
        F.col("_k").alias("change_key"),
        *(
            F.when(
                p[name].isNotNull(),
                F.struct(*(f.column(p[name][f.name]).alias(f.name) for f in schema.row)),
            )
            .cast(spark)
            .alias(name)
            if schema.row
            else F.lit(None)
            .cast(T.StructType([T.StructField("_none", T.StringType())]))
            .alias(name)
            for name, spark in typed_row
        ),
        F.coalesce(error, drift).alias("error"),
        F.when(error.isNotNull(), F.concat(F.lit("\\x"), F.lower(F.hex("value")))).alias(
            "raw_value"
        ),
    )


def mirror_rows(staged: DataFrame) -> tuple[DataFrame, list[str], list[FieldMapping]]:
    """A staged batch of changes -> (rows for the mirror, key columns, data columns).

    One row per valid change (tombstones and errors are left out): a delete carries its key and
    `before` image, anything else its `after` image; plus the change's source position.
    """
    after_type = staged.schema["after"].dataType
    key_type = staged.schema["change_key"].dataType
    fields = [
        FieldMapping(f.name, f.dataType, f.dataType) for f in after_type.fields if f.name != "_none"
    ]
    keys = [f.name for f in key_type.fields] if isinstance(key_type, T.StructType) else []
    deleted = F.col("op") == "d"
    columns = []
    for f in fields:
        value = F.when(deleted, F.col("before")[f.name]).otherwise(F.col("after")[f.name])
        if f.name in keys:
            value = F.coalesce(value, F.col("change_key")[f.name].cast(f.spark))
        columns.append(value.alias(f.name))
    rows = staged.where(F.col("error").isNull() & ~F.col("tombstone")).select(
        *columns,
        F.col("lsn").alias(CDC_COLUMNS[0]),
        F.col("partition").alias(CDC_COLUMNS[1]),
        F.col("offset").alias(CDC_COLUMNS[2]),
        F.col("op").alias(CDC_COLUMNS[3]),
        F.col("ts_ms").alias(CDC_COLUMNS[4]),
    )
    return rows, keys, fields


_PG = {
    T.ShortType: "smallint",
    T.IntegerType: "integer",
    T.LongType: "bigint",
    T.FloatType: "real",
    T.DoubleType: "double precision",
    T.BooleanType: "boolean",
    T.StringType: "text",
    T.DateType: "date",
    T.TimestampType: "timestamp with time zone",
    T.TimestampNTZType: "timestamp without time zone",
}


def pg_type(spark: T.DataType) -> str:
    """The PostgreSQL type of a mirror column, spelled as `format_type()` spells it."""
    if isinstance(spark, T.DecimalType):
        return f"numeric({spark.precision},{spark.scale})"
    for cls, name in _PG.items():
        if isinstance(spark, cls):
            return name
    raise SchemaError(f"no PostgreSQL type for Spark type {spark.simpleString()}")
