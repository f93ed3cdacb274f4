"""Messages -> typed rows, driven by the declared format; and event-time aggregates of them.

Each message is parsed once into a VARIANT (`try_parse_json`); every declared field is read from
that binary form, never by scanning the JSON text again (only its first character is looked at,
to tell an object from other JSON). Every message yields one row: the typed fields when valid,
or `error` naming the first thing wrong plus the raw bytes, so nothing is dropped silently and
malformed messages can be quarantined with their position.

Types are strict at the top level: a JSON string is not a number, a number is not a string, an
integer field takes only integers in range, infinities are rejected. Inside arrays and structs
Spark's variant cast applies (e.g. "2" becomes 2), but every nested leaf must be present.

Reading fields out of a VARIANT is slow (Spark builds a cast expression for every value), so a
message first meets a fast path that vouches for it when it fits the declared fields exactly:
`jvm`, one streaming pass in the project's Java function (`jvm/udf`, on Spark's classpath next to
the Kafka connector), or, where a Spark lacks it, `variant`: the document's shape
(`schema_of_variant`, one string) matched against the declared types, with the values from one
`from_json`. A message the fast path cannot vouch for goes through the field-by-field checks
above, which decide and name the error; the fast path only ever accepts what those checks
accept, with the same values (tested both ways).
"""

import hashlib
import json
import logging
import re
from typing import Literal

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from kafka_assets.spec import FieldType, FormatSpec, TableSpec, WindowSpec

log = logging.getLogger(__name__)

FastPath = Literal["auto", "jvm", "variant", "off"]
VOUCH_CLASS = "io.kafkaassets.VouchJson"
"""The fast path's Java reader (jvm/udf), built into Spark's jars folder by `ensure_jars`."""

_SCALARS = {
    "string": T.StringType(),
    "int": T.IntegerType(),
    "long": T.LongType(),
    "double": T.DoubleType(),
    "boolean": T.BooleanType(),
    "timestamp": T.TimestampType(),
    "date": T.DateType(),
}


_JSON_WHITESPACE = " \t\n\r"
"""What JSON allows before a value (RFC 8259)."""

_CORRUPT = "_corrupt_record"
"""Where `from_json` puts the text of a message it could not convert in full."""

_SHAPES = {
    "string": "STRING",
    "timestamp": "STRING",
    "date": "STRING",
    "int": "BIGINT",
    "long": "BIGINT",
    "double": r"(?:BIGINT|DOUBLE|DECIMAL\(\d+,\d+\))",
    "decimal": r"(?:BIGINT|DECIMAL\(\d+,\d+\))",
    "boolean": "BOOLEAN",
}
"""What `schema_of_variant` says of a JSON value each declared kind accepts without a cast."""


def spark_type(ftype: FieldType) -> T.DataType:
    """The type of a field's column in the parsed rows (JSON-like values travel as JSON text)."""
    if ftype.kind == "decimal":
        return T.DecimalType(ftype.precision, ftype.scale)
    if ftype.kind == "json" or ftype.is_complex:
        return T.StringType()
    return _SCALARS[ftype.kind]


def _cast_type(ftype: FieldType) -> str:
    """The DDL type a complex value is cast to before it is checked and written as JSON."""
    if ftype.kind == "array":
        return f"array<{_cast_type(ftype.element)}>"
    if ftype.kind == "struct":
        return "struct<" + ", ".join(f"`{n}`: {_cast_type(t)}" for n, t in ftype.fields) + ">"
    if ftype.kind == "json":
        return "variant"
    if ftype.kind in ("timestamp", "date"):
        return "string"
    return str(ftype)


def _has_null_leaf(value: Column, ftype: FieldType) -> Column:
    """True when any leaf of a cast complex value is null (a missing or uncastable nested field).

    Spark cannot code-generate a higher-order function (`exists`), and one such expression takes
    the whole parse out of whole-stage code generation: every message, valid or not, then paid
    for the row it materializes in between. So arrays are tested with code-generated functions:
    the array of one field of every element (`items.sku`) is null where that element is, and
    `sort_array` puts nulls first.
    """
    if ftype.kind == "struct":
        out = value.isNull()
        for name, t in ftype.fields:
            out = out | _has_null_leaf(value[name], t)
        return out
    if ftype.kind == "array":
        return value.isNull() | _null_in(value, ftype.element)
    return value.isNull()


def _null_in(values: Column, element: FieldType) -> Column:
    """True when an array holds a null element or an element with a null leaf."""
    if element.kind == "struct":
        out = F.lit(False)
        for name, t in element.fields:
            out = out | _null_in(values[name], t)
        return out
    if element.kind == "json":
        # VARIANT values cannot be sorted; the only case left to a higher-order function.
        return F.exists(values, lambda e: e.isNull())
    first = F.get(F.sort_array(values), 0)
    has_null = (F.size(values) > 0) & first.isNull()
    if element.kind == "array":
        # With a null inner array, `flatten` is null, and so is the test below it: `has_null`
        # has said true already, and `true OR null` is true.
        return has_null | _null_in(F.flatten(values), element.element)
    return has_null


def _typed(field: Column, json_type: Column | None, ftype: FieldType) -> tuple[Column, Column]:
    """(typed value or null, whether the present value is acceptable) for one scalar field.

    `json_type` is the field's `schema_of_variant`: what the JSON value is, before any cast.
    """
    kind = ftype.kind
    if kind == "string":
        return F.try_variant_get(field, "$", "string"), json_type == "STRING"
    if kind in ("int", "long"):
        value = F.try_variant_get(field, "$", kind)
        return value, (json_type == "BIGINT") & value.isNotNull()
    if kind == "double":
        value = F.try_variant_get(field, "$", "double")
        numeric = json_type.isin("BIGINT", "DOUBLE") | json_type.startswith("DECIMAL")
        finite = ~value.isin(float("inf"), float("-inf")) & ~F.isnan(value)
        return value, numeric & value.isNotNull() & finite
    if kind == "decimal":
        value = F.try_variant_get(field, "$", str(ftype))
        numeric = (json_type == "BIGINT") | json_type.startswith("DECIMAL")
        return value, numeric & value.isNotNull()
    if kind == "boolean":
        return F.try_variant_get(field, "$", "boolean"), json_type == "BOOLEAN"
    if kind in ("timestamp", "date"):
        text = F.try_variant_get(field, "$", "string")
        value = F.try_to_timestamp(text) if kind == "timestamp" else F.try_to_date(text)
        return value, (json_type == "STRING") & value.isNotNull()
    raise ValueError(f"not a scalar type: {ftype}")


_PLAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ITEM_END = r"(?:, |(?=>$))"
"""After a field in `schema_of_variant`'s OBJECT<...>: the next field, or the closing bracket."""


def _shape(ftype: FieldType) -> str | None:
    """A regex for what `schema_of_variant` says of a value that fits `ftype` without a cast.

    None when the fast path does not cover the type (`json` takes any value): such a format is
    parsed field by field.
    """
    if ftype.kind in _SHAPES:
        return _SHAPES[ftype.kind]
    if ftype.kind == "array":
        inner = _shape(ftype.element)
        return None if inner is None else f"ARRAY<{inner}>"
    if ftype.kind == "struct":
        parts = []
        for name, t in sorted(ftype.fields):
            inner = _shape(t)
            if inner is None or not _PLAIN_NAME.match(name):
                return None
            parts.append(f"{name}: {inner}")
        return "OBJECT<" + ", ".join(parts) + ">"
    return None


def document_shape(fmt: FormatSpec) -> str | None:
    """The regex a message's `schema_of_variant` must match for the fast path, or None.

    A variant object lists its fields sorted by name. A required field must have its type; an
    optional one may be absent or null. A message with undeclared fields takes the slow path
    (a pattern that skipped them cost more than it saved).
    """
    names = sorted(fmt.fields)
    if not all(_PLAIN_NAME.match(n) for n in names):
        return None
    pattern = "^OBJECT<"
    for name in names:
        spec = fmt.fields[name]
        shape = _shape(spec.parsed_type)
        if shape is None:
            return None
        if spec.required:
            pattern += f"{name}: {shape}{_ITEM_END}"
        else:
            pattern += f"(?:{name}: (?:{shape}|VOID){_ITEM_END})?"
    return pattern + ">$"


def _read_type(ftype: FieldType) -> str:
    """The DDL type `from_json` reads a field as (timestamps as text, parsed as the checks do)."""
    if ftype.is_complex:
        return _cast_type(ftype)
    if ftype.kind in ("timestamp", "date"):
        return "string"
    return spark_type(ftype).simpleString()


def _type_json(ftype: FieldType) -> dict:
    """A declared type as the Java reader takes it."""
    out: dict = {"kind": ftype.kind}
    if ftype.kind == "decimal":
        out.update(precision=ftype.precision, scale=ftype.scale)
    if ftype.kind == "array":
        out["element"] = _type_json(ftype.element)
    if ftype.kind == "struct":
        out["fields"] = [[n, _type_json(t), True] for n, t in ftype.fields]
    return out


def jvm_reader(raw: DataFrame, fmt: FormatSpec, required: bool) -> Column | None:
    """The Java reader's answer per record (a struct of the fields, or null: not vouched for).

    None when this Spark cannot load the class (a server or cluster started without the
    project's jars); `required` makes that an error instead.
    """
    declared = ", ".join(f"`{n}`: {_read_type(f.parsed_type)}" for n, f in fmt.fields.items())
    spec = json.dumps([[n, _type_json(f.parsed_type), f.required] for n, f in fmt.fields.items()])
    name = "kafka_assets_vouch_" + hashlib.sha256(declared.encode()).hexdigest()[:16]
    spark = raw.sparkSession
    try:
        if not spark.catalog.functionExists(name):  # registering again logs a warning
            spark.udf.registerJavaFunction(name, VOUCH_CLASS, f"struct<{declared}>")
    except Exception as exc:  # noqa: BLE001 - any failure to load the class means "not here"
        if required:
            raise
        log.warning(f"parsing without the Java fast path ({VOUCH_CLASS}: {exc})")
        return None
    return F.call_function(name, F.col("value"), F.lit(spec))


def _fast_path(
    fmt: FormatSpec, text: Column, shape: str | None, vouched: Column | None
) -> tuple[list[Column], Column]:
    """(each field's value, whether the message is valid) for messages the fast path vouches for.

    `false` means "not known to be valid": the field-by-field checks then decide. With the Java
    reader (`vouched`) the type checks are done; otherwise the document's shape must match.
    """
    if vouched is not None:
        read = vouched
        ok = read.isNotNull()  # it vouches only for well-formed UTF-8
    else:
        schema = ", ".join(f"`{n}` {_read_type(f.parsed_type)}" for n, f in fmt.fields.items())
        read = F.from_json(
            text, f"{schema}, `{_CORRUPT}` string", {"columnNameOfCorruptRecord": _CORRUPT}
        )
        ok = (
            F.is_valid_utf8(text)
            & F.schema_of_variant(F.try_parse_json(text)).rlike(shape)
            & read[_CORRUPT].isNull()
            & read.isNotNull()
        )
    values = []
    for name, spec in fmt.fields.items():
        ftype = spec.parsed_type
        got = read[name]
        value = got
        if ftype.kind == "timestamp":
            value = F.try_to_timestamp(got)
            ok = ok & (got.isNull() | value.isNotNull())
        elif ftype.kind == "date":
            value = F.try_to_date(got)
            ok = ok & (got.isNull() | value.isNotNull())
        elif ftype.kind == "double" and vouched is None:
            ok = ok & (got.isNull() | (~got.isin(float("inf"), float("-inf")) & ~F.isnan(got)))
        elif ftype.is_complex:
            value = F.to_json(got)
            if vouched is None:
                # A missing or null leaf: Spark writes it as "null" when casting to text (a
                # string leaf that says "null" goes the slow way, which is only slower).
                ok = ok & (got.isNull() | ~got.cast("string").contains("null"))
        if spec.required:
            ok = ok & got.isNotNull()
        if spec.allowed is not None:
            ok = ok & (got.isNull() | value.isin(*spec.allowed))
        values.append(value.alias(f"_fx_{name}"))
    # Null (e.g. a document the variant parser refused, such as one with a duplicated key, but
    # from_json read) means "not vouched for", never "valid".
    return values, F.coalesce(ok, F.lit(False))


def parse_messages(raw: DataFrame, fmt: FormatSpec, fast: FastPath = "auto") -> DataFrame:
    """One row per Kafka record: position, key, each declared field typed, `error`, `raw_value`.

    Built in stages so that every expensive value (the parsed document, each field's variant, its
    JSON type, its typed value) is computed once and referenced by name afterwards. `fast` picks
    the fast path: `auto` the Java reader where Spark has it, else `variant`; `off` checks every
    message field by field (the reference both fast paths are tested against).
    """
    fields = {n: f.parsed_type for n, f in fmt.fields.items()}
    scalar = [n for n, t in fields.items() if not (t.is_complex or t.kind == "json")]
    text = F.col("value").cast("string")
    df = raw.select(
        "topic",
        "partition",
        "offset",
        F.col("timestamp").alias("kafka_timestamp"),
        F.col("key").cast("string").alias("key"),
        "value",
    )
    shape = document_shape(fmt) if fast != "off" else None
    vouched = None
    if shape is not None and fast in ("auto", "jvm"):
        vouched = jvm_reader(raw, fmt, required=fast == "jvm")
    if shape is not None:
        values, ok = _fast_path(fmt, text, shape, vouched)
        df = df.select("*", *values, ok.alias("_fast"))
    else:
        df = df.select("*", F.lit(False).alias("_fast"))
    # The checks below see only what the fast path did not vouch for: on a null document every
    # one of them is a null test, not a variant cast.
    df = df.select("*", F.when(~F.col("_fast"), F.try_parse_json(text)).alias("_doc"))
    df = df.select(
        "*",
        *(F.try_variant_get("_doc", f"$['{n}']", "variant").alias(f"_v_{n}") for n in fields),
    )
    df = df.select("*", *(F.schema_of_variant(f"_v_{n}").alias(f"_t_{n}") for n in scalar))
    staged: list[Column] = []
    for name, ftype in fields.items():
        field = F.col(f"_v_{name}")
        if name in scalar:
            value, ok = _typed(field, F.col(f"_t_{name}"), ftype)
            staged += [value.alias(f"_x_{name}"), ok.alias(f"_ok_{name}")]
        elif ftype.kind == "json":
            staged += [F.to_json(field).alias(f"_x_{name}"), F.lit(True).alias(f"_ok_{name}")]
        else:
            staged.append(F.try_variant_get(field, "$", _cast_type(ftype)).alias(f"_c_{name}"))
    df = df.select("*", *staged)
    complex_ = [n for n, t in fields.items() if t.is_complex]
    if complex_:
        df = df.select(
            "*",
            *(F.to_json(f"_c_{n}").alias(f"_x_{n}") for n in complex_),
            *(
                (F.col(f"_c_{n}").isNotNull() & ~_has_null_leaf(F.col(f"_c_{n}"), fields[n])).alias(
                    f"_ok_{n}"
                )
                for n in complex_
            ),
        )

    checks = [
        F.when(F.col("value").isNull() | (F.length("value") == 0), F.lit("empty message value")),
        # Inline, not columns: only the messages the fast path left are tested.
        F.when(~F.is_valid_utf8(text), F.lit("invalid UTF-8")),
        F.when(F.col("_doc").isNull(), F.lit("invalid JSON")),
        # A parsed document is an object when its text opens with `{`: a test on the first
        # character, where the document's whole schema as a string cost 15% of the parse.
        F.when(
            ~F.ltrim(text, F.lit(_JSON_WHITESPACE)).startswith("{"),
            F.lit("not a JSON object"),
        ),
    ]
    absent = {n: F.col(f"_v_{n}").isNull() | F.is_variant_null(f"_v_{n}") for n in fields}
    got = {n: F.substring(F.to_json(F.col(f"_v_{n}")), 1, 80) for n in fields}
    for name, spec in fmt.fields.items():
        if spec.required:
            checks.append(F.when(absent[name], F.lit(f"missing field: {name}")))
    for name, ftype in fields.items():
        checks.append(
            F.when(
                ~absent[name] & ~F.coalesce(F.col(f"_ok_{name}"), F.lit(False)),
                F.concat(F.lit(f"invalid {name}: expected {ftype}, got "), got[name]),
            )
        )
    for name, spec in fmt.fields.items():
        if spec.allowed is not None:
            listed = ", ".join(str(a) for a in spec.allowed)
            checks.append(
                F.when(
                    ~absent[name] & ~F.col(f"_x_{name}").isin(*spec.allowed),
                    F.concat(F.lit(f"invalid {name}: not one of [{listed}]: "), got[name]),
                )
            )
    # An optimizer fence: a filter on `error` (e.g. keeping valid rows) would otherwise be pushed
    # below these projections and inline the whole parse into the filter, once per reference to
    # the document, which makes code generation take tens of seconds. A non-deterministic term
    # keeps the filter above; partition ids are never negative, so the term never yields a value.
    fence = F.when(F.spark_partition_id() < 0, F.lit("unreachable"))
    df = df.withColumn("error", F.when(~F.col("_fast"), F.coalesce(*checks, fence)))
    fast_value = {n: F.col(f"_fx_{n}") if shape is not None else F.lit(None) for n in fields}
    return df.select(
        "topic",
        "partition",
        "offset",
        "kafka_timestamp",
        "key",
        *(
            F.when(F.col("_fast"), fast_value[n])
            .when(F.col("error").isNull(), F.col(f"_x_{n}"))
            .cast(spark_type(t))
            .alias(n)
            for n, t in fields.items()
        ),
        "error",
        # Hex digits lower-cased by translation: `lower` goes through ICU's case mapping.
        F.when(
            F.col("error").isNotNull(),
            F.concat(F.lit("\\x"), F.translate(F.hex("value"), "ABCDEF", "abcdef")),
        ).alias("raw_value"),
    )


def may_pass(raw: DataFrame, fmt: FormatSpec, where: str) -> DataFrame:
    """The Kafka records a table's `where` may keep, picked before the full parse.

    For an aggregate that keeps a fraction of the messages (e.g. `status = 'paid'`), most of the
    parse is wasted. `where` is evaluated on a plain `from_json` read of the scalar fields: a valid
    message reads there exactly as its checked values (every top-level scalar the checks accept,
    `from_json` reads the same way, and absent fields are null in both), so a record for which the
    condition is false could only ever be dropped by it. True or null keeps the record for the
    full parse. Conditions on complex fields or on `error` are left to the full parse.
    """
    scalars = {
        n: f.parsed_type
        for n, f in fmt.fields.items()
        if not (f.parsed_type.is_complex or f.parsed_type.kind == "json")
    }
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", where))
    if words & (set(fmt.fields) - set(scalars)) or words & {"error", "raw_value"}:
        return raw
    text = F.col("value").cast("string")
    schema = ", ".join(f"`{n}` {_read_type(t)}" for n, t in scalars.items())
    read = F.from_json(text, schema)
    values = []
    for name, ftype in scalars.items():
        value = read[name]
        if ftype.kind == "timestamp":
            value = F.try_to_timestamp(value)
        elif ftype.kind == "date":
            value = F.try_to_date(value)
        values.append(value.alias(name))
    probe = raw.select(
        F.struct(*raw.columns).alias("_record"),
        "topic",
        "partition",
        "offset",
        F.col("timestamp").alias("kafka_timestamp"),
        F.col("key").cast("string").alias("key"),
        *values,
    )
    return probe.where(F.coalesce(F.expr(where), F.lit(True))).select("_record.*")


_AGGS = {
    "sum": F.sum,
    "min": F.min,
    "max": F.max,
    "avg": F.avg,
    "approx_distinct": F.approx_count_distinct,
}


def aggregate(
    events: DataFrame, table: TableSpec, fmt: FormatSpec, watermark: bool = True
) -> DataFrame:
    """Totals per event-time window and group of the valid rows.

    Over a stream in update mode (`watermark`), the running totals Spark keeps in its state; over
    one staged micro-batch (no watermark), that batch's partial totals, which the warehouse adds
    to the stored ones.
    """
    window = table.window or WindowSpec()
    event_time = fmt.event_time
    df = events.where(F.col("error").isNull())
    if table.where:
        df = df.where(F.expr(table.where))
    if watermark:
        df = df.withWatermark(event_time, window.watermark)
    measures = []
    for m in table.measures or ():
        if m.agg == "count":
            measures.append(F.count(m.column or F.lit(1)).cast("long").alias(m.name))
        else:
            measures.append(_AGGS[m.agg](m.column).alias(m.name))
    group_by = list(table.group_by or ())
    return (
        df.groupBy(F.window(event_time, window.size), *group_by)
        .agg(*measures)
        .select(
            F.col("window.start").alias("window_start"),
            F.col("window.end").alias("window_end"),
            *group_by,
            *(m.name for m in table.measures or ()),
        )
    )
