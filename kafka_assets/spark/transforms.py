"""Parsing and shaping of the Kafka records, as pure DataFrame -> DataFrame functions.

Every message yields one row: parsed fields when valid, or `error` naming what is wrong (and the
raw bytes), so nothing is dropped silently and malformed messages can be quarantined.
"""

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

WATERMARK = "10 minutes"
WINDOW = "1 minute"
ORDER_STATUSES = ("placed", "paid", "shipped", "cancelled")

ITEM = T.StructType(
    [
        T.StructField("sku", T.StringType()),
        T.StructField("quantity", T.IntegerType()),
        T.StructField("unit_price", T.DoubleType()),
    ]
)
ORDER_SCHEMA = T.StructType(
    [
        T.StructField("event_id", T.StringType()),
        T.StructField("order_id", T.StringType()),
        T.StructField("status", T.StringType()),
        T.StructField("customer_id", T.StringType()),
        T.StructField("items", T.ArrayType(ITEM)),
        T.StructField("amount", T.DoubleType()),
        T.StructField("currency", T.StringType()),
        T.StructField("event_time", T.StringType()),
    ]
)
PAGE_VIEW_SCHEMA = T.StructType(
    [
        T.StructField("event_id", T.StringType()),
        T.StructField("session_id", T.StringType()),
        T.StructField("user_id", T.StringType()),
        T.StructField("page", T.StringType()),
        T.StructField("referrer", T.StringType()),
        T.StructField("event_time", T.StringType()),
    ]
)
ORDER_REQUIRED = ("event_id", "order_id", "status", "customer_id", "items", "amount", "currency")
PAGE_VIEW_REQUIRED = ("event_id", "session_id", "page")


def _first_error(
    json_text: Column, parsed: str, required: tuple[str, ...], schema: T.StructType
) -> Column:
    """The first reason a record is unusable, or null; checks run in order of severity."""
    checks = [
        F.when(json_text.isNull(), F.lit("empty message value")),
        F.when(F.get_json_object(json_text, "$").isNull(), F.lit("invalid JSON")),
    ]
    # from_json turns a number into a string for a string field; the raw text tells them apart.
    for f in schema.fields:
        if isinstance(f.dataType, T.StringType):
            first = F.regexp_extract(json_text, rf'"{f.name}"\s*:\s*(.)', 1)
            checks.append(
                F.when(
                    ~first.isin('"', "n", ""),
                    F.concat(
                        F.lit(f"invalid {f.name}: not a string: "),
                        F.substring(F.get_json_object(json_text, f"$.{f.name}"), 1, 40),
                    ),
                )
            )
    for field in (*required, "event_time"):
        raw = F.get_json_object(json_text, f"$.{field}")
        checks.append(F.when(raw.isNull(), F.lit(f"missing field: {field}")))
        checks.append(
            F.when(
                F.col(f"{parsed}.{field}").isNull(),
                F.concat(F.lit(f"invalid {field}: "), F.substring(raw, 1, 80)),
            )
        )
    checks.append(
        F.when(
            F.try_to_timestamp(F.col(f"{parsed}.event_time")).isNull(),
            F.concat(F.lit("invalid event_time: "), F.col(f"{parsed}.event_time")),
        )
    )
    return F.coalesce(*checks)


def _envelope(raw: DataFrame, schema: T.StructType) -> DataFrame:
    text = F.col("value").cast("string")
    return raw.select(
        "topic",
        "partition",
        "offset",
        F.col("timestamp").alias("kafka_timestamp"),
        F.col("key").cast("string").alias("key"),
        "value",
        text.alias("json_text"),
        F.from_json(text, schema, {"mode": "PERMISSIVE"}).alias("p"),
    )


def _with_error(
    df: DataFrame, schema: T.StructType, required: tuple[str, ...], extra: Column | None = None
) -> DataFrame:
    error = _first_error(F.col("json_text"), "p", required, schema)
    if extra is not None:
        error = F.coalesce(error, extra)
    return df.withColumn("error", error)


def _kafka_cols(df: DataFrame) -> list[Column]:
    return [
        F.col("topic"),
        F.col("partition"),
        F.col("offset"),
        F.col("kafka_timestamp"),
        F.col("key"),
    ]


def _raw_when_error() -> Column:
    """PostgreSQL's bytea hex text form, kept only for rejected messages."""
    return F.when(F.col("error").isNotNull(), F.concat(F.lit("\\x"), F.lower(F.hex("value"))))


def order_events(raw: DataFrame) -> DataFrame:
    """One row per orders message: typed fields, or an error with the raw bytes."""
    df = _envelope(raw, ORDER_SCHEMA)
    unknown_status = F.when(
        ~F.col("p.status").isin(*ORDER_STATUSES), F.concat(F.lit("unknown status: "), "p.status")
    )
    # A mistyped nested field (e.g. quantity "two") parses to null inside the array, not to a
    # null array, so each item is checked on its own.
    bad_item = F.when(
        F.exists(
            "p.items",
            lambda i: i["sku"].isNull() | i["quantity"].isNull() | i["unit_price"].isNull(),
        ),
        F.concat(
            F.lit("invalid items: "), F.substring(F.get_json_object("json_text", "$.items"), 1, 80)
        ),
    )
    df = _with_error(df, ORDER_SCHEMA, ORDER_REQUIRED, F.coalesce(unknown_status, bad_item))
    return df.select(
        *_kafka_cols(df),
        F.col("p.event_id").alias("event_id"),
        F.col("p.order_id").alias("order_id"),
        F.col("p.status").alias("status"),
        F.col("p.customer_id").alias("customer_id"),
        F.to_json("p.items").alias("items"),
        F.col("p.amount").alias("amount"),
        F.col("p.currency").alias("currency"),
        F.try_to_timestamp(F.col("p.event_time")).alias("event_time"),
        F.col("error"),
        _raw_when_error().alias("raw_value"),
    ).withWatermark("event_time", WATERMARK)


def page_view_events(raw: DataFrame) -> DataFrame:
    """One row per page_views message: typed fields, or an error with the raw bytes."""
    df = _with_error(_envelope(raw, PAGE_VIEW_SCHEMA), PAGE_VIEW_SCHEMA, PAGE_VIEW_REQUIRED)
    return df.select(
        *_kafka_cols(df),
        F.col("p.event_id").alias("event_id"),
        F.col("p.session_id").alias("session_id"),
        F.col("p.user_id").alias("user_id"),
        F.col("p.page").alias("page"),
        F.col("p.referrer").alias("referrer"),
        F.try_to_timestamp(F.col("p.event_time")).alias("event_time"),
        F.col("error"),
        _raw_when_error().alias("raw_value"),
    ).withWatermark("event_time", WATERMARK)


def revenue_per_minute(raw: DataFrame) -> DataFrame:
    """Paid revenue per one-minute event-time window and currency (update mode, running totals)."""
    paid = order_events(raw).where(F.col("error").isNull() & (F.col("status") == "paid"))
    return (
        paid.groupBy(F.window("event_time", WINDOW), F.col("currency"))
        .agg(F.round(F.sum("amount"), 2).alias("revenue"), F.count("*").alias("orders"))
        .select(
            F.col("window.start").alias("window_start"),
            F.col("window.end").alias("window_end"),
            "currency",
            "revenue",
            "orders",
        )
    )


def page_view_counts(raw: DataFrame) -> DataFrame:
    """Page views per one-minute event-time window and page (update mode, running totals)."""
    views = page_view_events(raw).where(F.col("error").isNull())
    return (
        views.groupBy(F.window("event_time", WINDOW), F.col("page"))
        .agg(F.count("*").alias("views"), F.approx_count_distinct("session_id").alias("sessions"))
        .select(
            F.col("window.start").alias("window_start"),
            F.col("window.end").alias("window_end"),
            "page",
            "views",
            "sessions",
        )
    )
