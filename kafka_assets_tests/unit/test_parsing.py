"""Parsing and aggregating driven by the shop's YAML, on DataFrames shaped like Kafka's source.

The generator says which messages it broke; parsing must reject exactly those, with a reason a
person can read, and keep every other message with typed fields. Targeted cases cover each rule.
"""

import json
import re
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from kafka_assets.shop.generator import (
    ORDER_STATUSES,
    ORDERS_TOPIC,
    PAGE_VIEWS_TOPIC,
    GeneratedMessage,
    GeneratorConfig,
    generate,
)
from kafka_assets.spark.parsing import (
    aggregate,
    document_shape,
    jvm_reader,
    may_pass,
    parse_messages,
)
from kafka_assets.spec import FormatSpec, PipelineSpec

DEFS = Path(__file__).resolve().parents[2] / "kafka_assets" / "defs" / "shop"
START = datetime(2026, 11, 24, 19, 20, tzinfo=UTC)
KAFKA_TIMESTAMP = datetime(2026, 11, 24, 20, 0, tzinfo=UTC)
PARTITIONS = 3

KAFKA_SOURCE_SCHEMA = T.StructType(
    [
        T.StructField("key", T.BinaryType()),
        T.StructField("value", T.BinaryType()),
        T.StructField("topic", T.StringType()),
        T.StructField("partition", T.IntegerType()),
        T.StructField("offset", T.LongType()),
        T.StructField("timestamp", T.TimestampType()),
        T.StructField("timestampType", T.IntegerType()),
    ]
)


def kafka_frame(
    spark: SparkSession, topic: str, messages: list[GeneratedMessage]
) -> tuple[DataFrame, dict[tuple[int, int], GeneratedMessage]]:
    """The topic's messages as Spark's Kafka source yields them, keyed by (partition, offset)."""
    by_position: dict[tuple[int, int], GeneratedMessage] = {}
    next_offset = [0] * PARTITIONS
    rows = []
    for i, m in enumerate(x for x in messages if x.topic == topic):
        partition = i % PARTITIONS
        offset = next_offset[partition]
        next_offset[partition] += 1
        by_position[(partition, offset)] = m
        rows.append((m.key, m.value, topic, partition, offset, KAFKA_TIMESTAMP, 0))
    return spark.createDataFrame(rows, KAFKA_SOURCE_SCHEMA), by_position


def epoch_ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def expected_reason(topic: str, value: bytes) -> str:
    """The reason a generator-broken message must be rejected with, as a regex.

    Read from the message itself: which of the generator's malformations it carries.
    """
    try:
        text = value.decode()
    except UnicodeDecodeError:
        return re.escape("invalid UTF-8")
    try:
        doc = json.loads(text)
    except ValueError:
        return re.escape("invalid JSON")
    entity = "order_id" if topic == ORDERS_TOPIC else "session_id"
    for field in (entity, "event_time"):
        if doc.get(field) is None:
            return re.escape(f"missing field: {field}")
    if topic == PAGE_VIEWS_TOPIC and not isinstance(doc.get("user_id"), str | None):
        return re.escape(f"invalid user_id: expected string, got {doc['user_id']}")
    if topic == ORDERS_TOPIC and isinstance(doc["amount"], str):
        return re.escape(f'invalid amount: expected decimal(14,2), got "{doc["amount"]}"')
    if topic == ORDERS_TOPIC and any(not isinstance(i["quantity"], int) for i in doc["items"]):
        return re.escape("invalid items: expected array<struct<") + ".*"
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["event_time"]):
        return re.escape(f'invalid event_time: expected timestamp, got "{doc["event_time"]}"')
    if topic == ORDERS_TOPIC and doc["status"] not in ORDER_STATUSES:
        statuses = ", ".join(ORDER_STATUSES)
        return re.escape(f'invalid status: not one of [{statuses}]: "{doc["status"]}"')
    raise AssertionError(f"generator marked a message malformed that looks valid: {value!r}")


def pipeline(name: str) -> PipelineSpec:
    doc = yaml.safe_load((DEFS / name / "defs.yaml").read_text())
    return PipelineSpec.model_validate(doc["attributes"])


ORDERS_PIPELINE = pipeline("orders")
PAGE_VIEWS_PIPELINE = pipeline("page_views")


def order_events(df: DataFrame) -> DataFrame:
    return parse_messages(df, ORDERS_PIPELINE.format)


def page_view_events(df: DataFrame) -> DataFrame:
    return parse_messages(df, PAGE_VIEWS_PIPELINE.format)


def table(p: PipelineSpec, name: str):
    return next(t for t in p.tables if t.name == name)


@pytest.fixture(scope="module")
def messages() -> list[GeneratedMessage]:
    # 5 events/s spreads the 3000 messages over 10 minutes of event time: ten windows, late events.
    config = GeneratorConfig(seed=7, malformed_fraction=0.05, events_per_second=5.0)
    return list(generate(3000, config, START))


@pytest.fixture(scope="module")
def orders(spark, messages):
    return kafka_frame(spark, ORDERS_TOPIC, messages)


@pytest.fixture(scope="module")
def page_views(spark, messages):
    return kafka_frame(spark, PAGE_VIEWS_TOPIC, messages)


def _collect(df: DataFrame) -> list:
    return df.withColumn("event_time_ms", F.unix_millis("event_time")).collect()


def _check_one_row_per_message(rows, by_position, topic: str) -> None:
    positions = [(r.partition, r.offset) for r in rows]
    assert len(positions) == len(set(positions)) == len(by_position)
    assert set(positions) == set(by_position)
    assert {r.topic for r in rows} == {topic}
    assert sum(m.malformed for m in by_position.values()) >= 20  # the case is exercised


def _check_errors(rows, by_position, topic: str) -> None:
    valid = {pos for pos, m in by_position.items() if not m.malformed}
    assert {(r.partition, r.offset) for r in rows if r.error is None} == valid
    for r in rows:
        m = by_position[(r.partition, r.offset)]
        assert r.key == (m.key.decode() if m.key is not None else None)
        if r.error is None:
            assert r.raw_value is None
            continue
        assert re.fullmatch(expected_reason(topic, m.value), r.error), (r.error, m.value)
        assert r.raw_value == "\\x" + m.value.hex()


def test_order_events_one_row_per_message(orders) -> None:
    df, by_position = orders
    _check_one_row_per_message(_collect(order_events(df)), by_position, ORDERS_TOPIC)


def test_order_events_reject_exactly_the_broken_messages(orders) -> None:
    df, by_position = orders
    _check_errors(_collect(order_events(df)), by_position, ORDERS_TOPIC)


def test_order_events_valid_rows_are_typed(orders) -> None:
    df, by_position = orders
    out = order_events(df)
    assert dict(out.dtypes)["event_time"] == "timestamp"
    assert dict(out.dtypes)["amount"] == "decimal(14,2)"
    for r in _collect(out.where("error IS NULL")):
        doc = json.loads(by_position[(r.partition, r.offset)].value)
        assert r.event_time_ms == epoch_ms(doc["event_time"])
        assert (r.event_id, r.order_id, r.status, r.customer_id, r.currency) == (
            doc["event_id"],
            doc["order_id"],
            doc["status"],
            doc["customer_id"],
            doc["currency"],
        )
        assert r.amount == Decimal(str(doc["amount"]))
        assert json.loads(r.items) == doc["items"]


def test_page_view_events_one_row_per_message(page_views) -> None:
    df, by_position = page_views
    rows = _collect(page_view_events(df))
    _check_one_row_per_message(rows, by_position, PAGE_VIEWS_TOPIC)


def test_page_view_events_reject_exactly_the_broken_messages(page_views) -> None:
    df, by_position = page_views
    _check_errors(_collect(page_view_events(df)), by_position, PAGE_VIEWS_TOPIC)


def test_page_view_events_valid_rows_are_typed(page_views) -> None:
    df, by_position = page_views
    out = page_view_events(df)
    assert dict(out.dtypes)["event_time"] == "timestamp"
    for r in _collect(out.where("error IS NULL")):
        doc = json.loads(by_position[(r.partition, r.offset)].value)
        assert r.event_time_ms == epoch_ms(doc["event_time"])
        assert (r.event_id, r.session_id, r.user_id, r.page, r.referrer) == (
            doc["event_id"],
            doc["session_id"],
            doc["user_id"],
            doc["page"],
            doc["referrer"],
        )


def test_empty_value_is_rejected(spark) -> None:
    df = spark.createDataFrame(
        [(b"o-1", None, ORDERS_TOPIC, 0, 0, KAFKA_TIMESTAMP, 0)], KAFKA_SOURCE_SCHEMA
    )
    (row,) = order_events(df).collect()
    assert row.error == "empty message value"


def _valid_docs(messages, topic: str) -> list[dict]:
    return [json.loads(m.value) for m in messages if m.topic == topic and not m.malformed]


def _minute(text: str) -> int:
    return epoch_ms(text) // 60_000 * 60_000


def test_revenue_per_minute_matches_python(orders, messages) -> None:
    df, _ = orders
    expected: dict[tuple[int, str], list[Decimal]] = defaultdict(list)
    for doc in _valid_docs(messages, ORDERS_TOPIC):
        if doc["status"] == "paid":
            key = (_minute(doc["event_time"]), doc["currency"])
            expected[key].append(Decimal(str(doc["amount"])))
    assert len({start for start, _ in expected}) >= 10

    rows = (
        aggregate(
            order_events(df), table(ORDERS_PIPELINE, "revenue_per_minute"), ORDERS_PIPELINE.format
        )
        .select(
            F.unix_millis("window_start").alias("start"),
            F.unix_millis("window_end").alias("end"),
            "currency",
            "revenue",
            "orders",
        )
        .collect()
    )

    got = {(r.start, r.currency): r for r in rows}
    assert set(got) == set(expected)
    for (start, currency), amounts in expected.items():
        r = got[(start, currency)]
        assert r.end - r.start == 60_000
        assert r.orders == len(amounts)
        assert r.revenue == sum(amounts)  # decimal(14,2) sums exactly


def test_page_view_counts_match_python(page_views, messages) -> None:
    df, _ = page_views
    views: dict[tuple[int, str], int] = defaultdict(int)
    sessions: dict[tuple[int, str], set[str]] = defaultdict(set)
    for doc in _valid_docs(messages, PAGE_VIEWS_TOPIC):
        window = (_minute(doc["event_time"]), doc["page"])
        views[window] += 1
        sessions[window].add(doc["session_id"])

    rows = (
        aggregate(
            page_view_events(df),
            table(PAGE_VIEWS_PIPELINE, "page_view_counts"),
            PAGE_VIEWS_PIPELINE.format,
        )
        .select(
            F.unix_millis("window_start").alias("start"),
            F.unix_millis("window_end").alias("end"),
            "page",
            "views",
            "sessions",
        )
        .collect()
    )

    got = {(r.start, r.page): r for r in rows}
    assert set(got) == set(views)
    assert sum(r.views for r in rows) == sum(views.values())
    for window, count in views.items():
        r = got[window]
        assert r.end - r.start == 60_000
        assert r.views == count
        # approx_count_distinct is HyperLogLog++ with a 5 % relative standard deviation.
        exact = len(sessions[window])
        assert abs(r.sessions - exact) <= max(1, 0.15 * exact), (window, r.sessions, exact)


# -- every rule, one message at a time -----------------------------------------------------------

RULES = FormatSpec.model_validate(
    {
        "fields": {
            "id": {"type": "string", "required": True},
            "n": {"type": "int"},
            "big": {"type": "long"},
            "x": {"type": "double"},
            "money": {"type": "decimal(6,2)"},
            "flag": {"type": "boolean"},
            "at": {"type": "timestamp"},
            "day": {"type": "date"},
            "kind": {"type": "string", "allowed": ["a", "b"]},
            "doc": {"type": "json"},
            "pairs": {"type": "array<struct<k: string, v: int>>"},
        }
    }
)


def doc(**fields) -> bytes:
    return json.dumps({"id": "i-1", **fields}).encode()


CASES = [
    (None, "empty message value"),
    (b"", "empty message value"),
    (b'{"id": "\xff"}', "invalid UTF-8"),
    (b'{"id": "\xc0\x80"}', "invalid UTF-8"),  # an overlong NUL
    (b'{"id": "\xed\xa0\x80"}', "invalid UTF-8"),  # a surrogate
    (b'{"id": "\xf4\x90\x80\x80"}', "invalid UTF-8"),  # past U+10FFFF
    (b'{"id": "abcdefgh\xe2\x82"}', "invalid UTF-8"),  # cut short, after 8 ASCII bytes
    (b'{"\xe2\x82": 1, "id": "a"}', "invalid UTF-8"),  # in a key
    (b'{"id": "a", "id": "b"}', "invalid JSON"),
    (b'{"id": NaN}', "invalid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'"just a string"', "not a JSON object"),
    (b' \r\n\t[{"id": "i-1"}]', "not a JSON object"),
    (b"{}", "missing field: id"),
    (b'{"id": null}', "missing field: id"),
    (doc(n=3.5), "invalid n: expected int, got 3.5"),
    (doc(n="5"), 'invalid n: expected int, got "5"'),
    (doc(n=2**40), f"invalid n: expected int, got {2**40}"),
    (doc(big=True), "invalid big: expected long, got true"),
    (b'{"id": "i", "x": 1e999}', 'invalid x: expected double, got "Infinity"'),
    (doc(x="1.5"), 'invalid x: expected double, got "1.5"'),
    (doc(money=12345.67), "invalid money: expected decimal(6,2), got 12345.67"),
    (doc(flag=1), "invalid flag: expected boolean, got 1"),
    (doc(at="yesterday"), 'invalid at: expected timestamp, got "yesterday"'),
    (doc(at=1700000000), "invalid at: expected timestamp, got 1700000000"),
    (doc(day="24/11/2026"), 'invalid day: expected date, got "24/11/2026"'),
    (doc(kind="c"), 'invalid kind: not one of [a, b]: "c"'),
    (doc(id=7), "invalid id: expected string, got 7"),
    (doc(pairs=[{"k": "a", "v": "two"}]), "invalid pairs: expected array<struct<"),
    (doc(pairs=[{"k": "a"}]), "invalid pairs: expected array<struct<"),
    (doc(pairs={"k": "a", "v": 1}), "invalid pairs: expected array<struct<"),
]
VALID = doc(
    n=7,
    big=2**40,
    x=2,
    money=12.345,
    flag=False,
    at="2026-11-24T10:00:00.123Z",
    day="2026-11-24",
    kind="b",
    doc={"nested": [1, {"a": None}]},
    pairs=[{"k": "a", "v": 1}],
)
SPARSE = b" \r\n\t" + doc()  # whitespace before the object is still JSON


@pytest.fixture(scope="module")
def parsed(spark) -> dict[int, object]:
    """Every case in one DataFrame (one Spark job), by offset."""
    values = [v for v, _ in CASES] + [VALID, SPARSE]
    rows = [(b"k", v, "t", 0, i, KAFKA_TIMESTAMP, 0) for i, v in enumerate(values)]
    df = spark.createDataFrame(rows, KAFKA_SOURCE_SCHEMA)
    return {r.offset: r for r in parse_messages(df, RULES).collect()}


@pytest.mark.parametrize("case", range(len(CASES)))
def test_each_rule_names_what_is_wrong(parsed, case) -> None:
    value, reason = CASES[case]
    row = parsed[case]
    assert row.error is not None and row.error.startswith(reason), row.error
    assert row.raw_value == ("\\x" + value.hex() if value is not None else None)
    assert row.id is None  # nothing half-parsed leaks out of a rejected message


def test_valid_message_is_typed_and_optional_fields_may_be_absent(parsed) -> None:
    row = parsed[len(CASES)]
    assert row.error is None and row.raw_value is None
    assert (row.id, row.n, row.big, row.x, row.flag, row.kind) == ("i-1", 7, 2**40, 2.0, False, "b")
    assert row.money == Decimal("12.35")
    assert row.at == datetime(2026, 11, 24, 10, 0, 0, 123000)
    assert str(row.day) == "2026-11-24"
    assert json.loads(row.doc) == {"nested": [1, {"a": None}]}
    assert json.loads(row.pairs) == [{"k": "a", "v": 1}]

    sparse = parsed[len(CASES) + 1]
    assert sparse.error is None and sparse.n is None and sparse.pairs is None and sparse.doc is None


# -- the fast path: the same answer as the field-by-field checks ---------------------------------

FAST_RULES = RULES.model_copy(
    update={"fields": {n: f for n, f in RULES.fields.items() if n != "doc"}}
)
"""The rules without the `json` field: a format the fast path covers."""

RAW_UTF8 = '{"id": "\u00e9\U0001f600 abcdefgh \u4e2d", "kind": "a"}'.encode()
"""Well-formed UTF-8 as it is, not escaped (json.dumps escapes by default)."""
FAST_CASES = [
    VALID,
    doc(
        n=7,
        x=2,
        money=12.345,
        flag=False,
        at="2026-11-24T10:00:00.123Z",
        pairs=[{"k": "a", "v": 1}],
    ),
    doc(money=1.005, x=1e300, big=-(2**62), day="2026-11-24", kind="a"),
    doc(n=None, kind=None, pairs=None),  # optional fields null
    doc(pairs=[{"k": "null", "v": 1}]),  # a leaf that reads "null" is not a missing leaf
    doc(pairs=[{"k": "a", "v": 1}, {"k": "b"}]),  # a missing leaf in the second element
    doc(pairs=[{"k": "a", "v": 1}, None]),
    doc(pairs=[]),
    doc(pairs=[{"k": 5, "v": "2"}]),  # nested values take the variant cast
    doc(pairs=[{"k": "a", "v": 1, "w": 2}]),  # an undeclared nested field
    doc(extra="x", other={"a": 1}),  # undeclared top-level fields
    doc(n=2**31),
    doc(money=123456.7),
    doc(at="2026-11-24 10:00:00"),
    doc(at="2026-02-30T00:00:00Z"),
    doc(kind="b", id='\u00e9\U0001f600 \\ " \t'),
    b'{"id": "a", "n": 1, "n": 2}',
    b'{"id": "a"} {"id": "b"}',
    b'{"id": "a", "x": "NaN"}',
    b'{"id": "a", "money": "12.5"}',
    b'{"id": "a", "flag": "true"}',
    b'{"id": "a", "at": 20261124}',
    RAW_UTF8,
]


def test_the_fast_path_covers_the_shop_but_not_json_fields() -> None:
    assert document_shape(ORDERS_PIPELINE.format) is not None
    assert document_shape(PAGE_VIEWS_PIPELINE.format) is not None
    assert document_shape(FAST_RULES) is not None
    assert document_shape(RULES) is None  # `json` takes any value: checked field by field


def _vouched_by(path: str, df: DataFrame, fmt: FormatSpec) -> Column:
    """Whether the fast path `path` alone vouches for each record (before the checks)."""
    text = F.col("value").cast("string")
    if path == "jvm":
        return jvm_reader(df, fmt, required=True).isNotNull()
    return F.schema_of_variant(F.try_parse_json(text)).rlike(document_shape(fmt))


@pytest.mark.parametrize("path", ["jvm", "variant"])
def test_the_shop_messages_take_the_fast_path(spark, orders, page_views, path) -> None:
    """Every valid generated message is vouched for, so it never meets the checks (allowed values
    and timestamps are checked after the fast path's reading)."""
    for (df, by_position), fmt in (
        (orders, ORDERS_PIPELINE.format),
        (page_views, PAGE_VIEWS_PIPELINE.format),
    ):
        matched = df.select("partition", "offset", _vouched_by(path, df, fmt).alias("m"))
        valid = {pos for pos, m in by_position.items() if not m.malformed}
        assert {(r.partition, r.offset) for r in matched.collect() if r.m} >= valid


@pytest.mark.parametrize("path", ["jvm", "variant"])
def test_the_fast_path_agrees_with_the_checks_on_every_rule(spark, path) -> None:
    values = [v for v, _ in CASES] + FAST_CASES + [SPARSE]
    rows = [(b"k", v, "t", 0, i, KAFKA_TIMESTAMP, 0) for i, v in enumerate(values)]
    df = spark.createDataFrame(rows, KAFKA_SOURCE_SCHEMA)
    fast = parse_messages(df, FAST_RULES, fast=path).orderBy("offset").collect()
    checked = parse_messages(df, FAST_RULES, fast="off").orderBy("offset").collect()
    assert len(fast) == len(values)
    for value, a, b in zip(values, fast, checked, strict=True):
        assert a.asDict() == b.asDict(), value
    accepted = {bytes(v) for v, r in zip(values, fast, strict=True) if r.error is None}
    assert VALID in accepted and SPARSE in accepted
    assert b'{"id": "a", "n": 1, "n": 2}' not in accepted  # duplicated key: not JSON we take
    vouched = df.select("offset", _vouched_by(path, df, FAST_RULES).alias("m")).collect()
    fast_offsets = {r.offset for r in vouched if r.m}
    first = len(CASES)
    assert {first + 1, first + 2, first + 3} <= fast_offsets  # these really went the fast way
    assert values.index(RAW_UTF8) in fast_offsets and RAW_UTF8 in accepted


@pytest.mark.parametrize("path", ["jvm", "variant"])
@pytest.mark.parametrize("topic", [ORDERS_TOPIC, PAGE_VIEWS_TOPIC])
def test_the_fast_path_agrees_with_the_checks_on_the_shop(
    spark, orders, page_views, topic, path
) -> None:
    df, _ = orders if topic == ORDERS_TOPIC else page_views
    fmt = (ORDERS_PIPELINE if topic == ORDERS_TOPIC else PAGE_VIEWS_PIPELINE).format
    fast, checked = parse_messages(df, fmt, fast=path), parse_messages(df, fmt, fast="off")
    assert fast.exceptAll(checked).count() == 0
    assert checked.exceptAll(fast).count() == 0
    assert fast.where("error IS NOT NULL").count() > 20


NESTED = FormatSpec.model_validate(
    {
        "fields": {
            "id": {"type": "string", "required": True},
            "deep": {"type": "array<array<struct<a: int, b: array<string>>>>"},
            "box": {"type": "struct<x: struct<y: int>, z: array<int>>"},
        }
    }
)
NESTED_CASES = [
    ({"deep": [[{"a": 1, "b": ["s"]}], []], "box": {"x": {"y": 1}, "z": [1, 2]}}, True),
    ({"deep": [], "box": {"x": {"y": 1}, "z": []}}, True),
    ({"deep": [[{"a": 1, "b": []}, {"a": 2, "b": ["t", "u"]}]]}, True),
    ({"deep": [[{"a": 1, "b": ["s"]}], None]}, False),  # a null inner array
    ({"deep": [[{"a": 1, "b": ["s"]}, None]]}, False),  # a null element of an inner array
    ({"deep": [[{"a": 1}]]}, False),  # a missing leaf, two arrays down
    ({"deep": [[{"a": 1, "b": ["s", None]}]]}, False),  # a null in the innermost array
    ({"deep": [[{"a": 1, "b": ["s"]}], [{"a": None, "b": ["s"]}]]}, False),
    ({"box": {"x": {}, "z": [1]}}, False),  # a missing leaf in a nested struct
    ({"box": {"x": {"y": 1}, "z": [None]}}, False),
    ({"box": {"x": None, "z": [1]}}, False),
]


@pytest.mark.parametrize("path", ["jvm", "variant", "off"])
def test_a_missing_leaf_at_any_depth_is_an_error(spark, path) -> None:
    """Every nested leaf must be present, in arrays of arrays and structs of structs alike."""
    rows = [
        (b"k", doc(**fields), "t", 0, i, KAFKA_TIMESTAMP, 0)
        for i, (fields, _) in enumerate(NESTED_CASES)
    ]
    df = spark.createDataFrame(rows, KAFKA_SOURCE_SCHEMA)
    parsed = parse_messages(df, NESTED, fast=path).orderBy("offset").collect()
    for (fields, valid), row in zip(NESTED_CASES, parsed, strict=True):
        if valid:
            assert row.error is None, (fields, row.error)
            for name, value in fields.items():
                assert json.loads(getattr(row, name)) == value
        else:
            name = next(iter(fields))
            assert row.error and row.error.startswith(f"invalid {name}: expected"), fields


WRITTEN = FormatSpec.model_validate(
    {
        "fields": {
            "id": {"type": "string", "required": True},
            "box": {
                "type": (
                    "struct<s: string, i: int, l: long, d: double, m: decimal(10,3), b: boolean,"
                    " t: timestamp, day: date, inner: array<struct<z: double, y: string>>>"
                )
            },
            "grid": {"type": "array<array<decimal(6,2)>>"},
        }
    }
)
WRITTEN_CASES = [
    {
        "box": {
            "inner": [{"y": "a", "z": 1}, {"z": 0.1, "y": 'q"\\\u00e9\U0001f600\n'}],
            "b": True,
            "day": "2026-11-24",
            "t": "2026-11-24T10:00:00Z",
            "m": 1.0005,
            "d": 1e-7,
            "l": 2**53 + 1,
            "i": -3,
            "s": "</script> \u2028",
        },
        "grid": [[1, 2.345], [], [0.001]],
    },
    {
        "box": {
            "s": "",
            "i": 0,
            "l": 0,
            "d": 1e300,
            "m": 0,
            "b": False,
            "t": "x",
            "day": "y",
            "inner": [],
        }
    },
    {"grid": [[-9999.994]]},
]


@pytest.mark.parametrize("path", ["jvm", "variant"])
def test_nested_values_are_written_as_the_checks_write_them(spark, path) -> None:
    """Arrays and structs travel as JSON text: byte for byte what `to_json` writes for the cast
    value, whichever path read them (the Java reader writes it itself)."""
    rows = [
        (b"k", doc(**fields), "t", 0, i, KAFKA_TIMESTAMP, 0)
        for i, fields in enumerate(WRITTEN_CASES)
    ]
    df = spark.createDataFrame(rows, KAFKA_SOURCE_SCHEMA)
    fast = parse_messages(df, WRITTEN, fast=path).orderBy("offset").collect()
    checked = parse_messages(df, WRITTEN, fast="off").orderBy("offset").collect()
    for fields, a, b in zip(WRITTEN_CASES, fast, checked, strict=True):
        assert b.error is None, b.error
        assert a.asDict() == b.asDict(), fields
    if path == "jvm":  # the Java reader wrote each of them (the shapes skip empty arrays)
        assert all(r.m for r in df.select(_vouched_by(path, df, WRITTEN).alias("m")).collect())


def test_the_parse_is_code_generated_whole(orders) -> None:
    """No step of the orders parse falls out of whole-stage code generation: one that did (it
    took a higher-order function) made every message pay for a row materialized in between."""
    df, _ = orders
    plan = parse_messages(df, ORDERS_PIPELINE.format)._jdf.queryExecution().executedPlan()
    outside, stack = [], [(plan, False)]
    while stack:
        node, in_stage = stack.pop()
        name = node.getClass().getSimpleName()
        if name == "ProjectExec" and not in_stage:
            outside.append(node.toString()[:300])
        # A stage's operators are its children down to an InputAdapter, which feeds it rows.
        inside = (in_stage or name == "WholeStageCodegenExec") and name != "InputAdapter"
        kids = node.children()
        stack += [(kids.apply(i), inside) for i in range(kids.size())]
    assert not outside, outside


# -- an aggregate's `where`, tried before the full parse -----------------------------------------


def _kept(df: DataFrame, fmt: FormatSpec, where: str) -> DataFrame:
    return parse_messages(df, fmt).where(F.col("error").isNull()).where(F.expr(where))


@pytest.mark.parametrize(
    "where",
    [
        "status = 'paid'",
        "status <> 'paid' AND amount > 100",
        "currency IS NULL OR event_time < timestamp'2026-11-24 19:25:00'",
        "items LIKE '%sku-001%'",  # a complex field: left to the full parse
    ],
)
def test_picking_by_where_first_keeps_every_row_the_where_keeps(orders, where) -> None:
    df, by_position = orders
    fmt = ORDERS_PIPELINE.format
    picked = may_pass(df, fmt, where)
    assert picked.columns == df.columns
    assert _kept(picked, fmt, where).exceptAll(_kept(df, fmt, where)).count() == 0
    assert _kept(df, fmt, where).exceptAll(_kept(picked, fmt, where)).count() == 0
    if "items" not in where:
        assert picked.count() < len(by_position)  # the point: most records skip the full parse


@pytest.mark.parametrize(
    "where", ["kind = 'a'", "kind IS NULL", "n > 3 OR x < 0", "at IS NOT NULL"]
)
def test_picking_by_where_first_on_every_rule(spark, where) -> None:
    values = [v for v, _ in CASES] + FAST_CASES + [SPARSE]
    rows = [(b"k", v, "t", 0, i, KAFKA_TIMESTAMP, 0) for i, v in enumerate(values)]
    df = spark.createDataFrame(rows, KAFKA_SOURCE_SCHEMA)
    whole = _kept(df, RULES, where).orderBy("offset").collect()
    assert _kept(may_pass(df, RULES, where), RULES, where).orderBy("offset").collect() == whole
