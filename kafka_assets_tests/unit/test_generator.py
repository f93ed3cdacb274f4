"""The shop event generator: deterministic, schema-valid, messy in the intended ways, and lazy."""

import itertools
import json
import re
import time
import tracemalloc
from datetime import UTC, datetime, timedelta, timezone

import pytest

from kafka_assets.shop.generator import (
    CURRENCIES,
    ORDER_STATUSES,
    ORDERS_TOPIC,
    PAGE_VIEWS_TOPIC,
    GeneratedMessage,
    GeneratorConfig,
    generate,
    summarize,
)

START = datetime(2026, 11, 24, 19, 20, tzinfo=UTC)
TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
ORDER_FIELDS = {
    "event_id",
    "order_id",
    "status",
    "customer_id",
    "items",
    "amount",
    "currency",
    "event_time",
}
VIEW_FIELDS = {"event_id", "session_id", "user_id", "page", "referrer", "event_time"}
RANK = {"placed": 0, "paid": 1, "shipped": 2, "cancelled": 2}


class Invalid(Exception):
    """The message breaks the documented schema; the text says how."""


def require(condition: bool, why: str) -> None:
    if not condition:
        raise Invalid(why)


def is_str(value, pattern: str) -> bool:
    return isinstance(value, str) and re.fullmatch(pattern, value) is not None


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def event_time(record: dict) -> datetime:
    return datetime.strptime(record["event_time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def parse(message: GeneratedMessage) -> dict:
    """The decoded record, or Invalid if anything about it breaks the topic's schema."""
    try:
        record = json.loads(message.value.decode("utf-8"))
    except ValueError as exc:
        raise Invalid(f"not JSON: {exc}") from exc
    require(isinstance(record, dict), "not an object")
    require(is_str(record.get("event_id"), r"e-\d+-\d+"), "event_id")
    require(is_str(record.get("event_time"), TIME_RE.pattern), "event_time format")
    event_time(record)
    if message.topic == ORDERS_TOPIC:
        require(set(record) == ORDER_FIELDS, f"fields {sorted(record)}")
        require(is_str(record["order_id"], r"o-\d{6,}"), "order_id")
        require(message.key == record["order_id"].encode(), "key != order_id")
        require(record["status"] in ORDER_STATUSES, "status")
        require(is_str(record["customer_id"], r"c-\d{4}"), "customer_id")
        require(record["currency"] in CURRENCIES, "currency")
        items = record["items"]
        require(isinstance(items, list) and 1 <= len(items) <= 4, "items")
        for item in items:
            require(set(item) == {"sku", "quantity", "unit_price"}, "item fields")
            require(is_str(item["sku"], r"sku-\d{3}"), "sku")
            quantity, price = item["quantity"], item["unit_price"]
            require(isinstance(quantity, int) and not isinstance(quantity, bool), "quantity type")
            require(quantity >= 1, "quantity")
            require(is_number(price) and price > 0 and round(price, 2) == price, "unit_price")
        require(is_number(record["amount"]), "amount type")
        total = round(sum(i["quantity"] * i["unit_price"] for i in items), 2)
        require(record["amount"] == total, f"amount {record['amount']} != {total}")
    else:
        require(message.topic == PAGE_VIEWS_TOPIC, f"topic {message.topic}")
        require(set(record) == VIEW_FIELDS, f"fields {sorted(record)}")
        require(is_str(record["session_id"], r"s-\d{5,}"), "session_id")
        require(message.key == record["session_id"].encode(), "key != session_id")
        require(record["user_id"] is None or is_str(record["user_id"], r"u-\d{4}"), "user_id")
        require(is_str(record["page"], r"/\S*"), "page")
        require(record["referrer"] is None or isinstance(record["referrer"], str), "referrer")
    return record


def kind_of(message: GeneratedMessage) -> str | None:
    """Which deliberate breakage a message shows; None if it is valid."""
    try:
        record = json.loads(message.value.decode("utf-8"))
    except ValueError:
        return "not_json"
    id_field = "order_id" if message.topic == ORDERS_TOPIC else "session_id"
    if record.get(id_field) is None or record.get("event_time") is None:
        return "missing_field"
    if not TIME_RE.fullmatch(record["event_time"]):
        return "bad_time"
    if message.topic == ORDERS_TOPIC and record["status"] not in ORDER_STATUSES:
        return "unknown_status"
    try:
        parse(message)
    except Invalid:
        return "wrong_type"
    return None


@pytest.fixture(scope="module")
def stream() -> list[GeneratedMessage]:
    return list(generate(20_000, GeneratorConfig(seed=7, malformed_fraction=0.05), START))


def test_same_inputs_give_identical_bytes():
    config = GeneratorConfig(seed=3)
    first = list(generate(3_000, config, START))
    assert first == list(generate(3_000, config, START))
    assert first[:1_000] == list(generate(1_000, config, START))  # a shorter run is a prefix
    assert first != list(generate(3_000, GeneratorConfig(seed=4), START))


@pytest.mark.parametrize(("ratio", "share"), [(0.0, 0.0), (1.0, 0.5), (3.0, 0.75)])
def test_exact_count_and_topic_split(ratio, share):
    messages = list(generate(10_001, GeneratorConfig(page_view_ratio=ratio), START))
    assert len(messages) == 10_001
    views = sum(m.topic == PAGE_VIEWS_TOPIC for m in messages)
    assert views / len(messages) == pytest.approx(share, abs=0.03)
    assert {m.topic for m in messages} <= {ORDERS_TOPIC, PAGE_VIEWS_TOPIC}


def test_valid_messages_match_schema(stream):
    valid = [m for m in stream if not m.malformed]
    for message in valid:
        parse(message)
    ids = [json.loads(m.value)["event_id"] for m in valid]
    assert len(set(ids)) == len(ids)
    assert {m.topic for m in valid} == {ORDERS_TOPIC, PAGE_VIEWS_TOPIC}


def test_nothing_malformed_at_zero_fraction():
    messages = list(generate(5_000, GeneratorConfig(malformed_fraction=0.0), START))
    assert not any(m.malformed for m in messages)
    for message in messages:
        parse(message)


def test_malformed_share_and_kinds(stream):
    malformed = [m for m in stream if m.malformed]
    assert len(malformed) / len(stream) == pytest.approx(0.05, rel=0.2)
    kinds = {(m.topic, kind_of(m)) for m in malformed}
    assert None not in {kind for _, kind in kinds}, "a message flagged malformed is valid"
    common = {"not_json", "missing_field", "wrong_type", "bad_time"}
    assert kinds == {(t, k) for t in (ORDERS_TOPIC, PAGE_VIEWS_TOPIC) for k in common} | {
        (ORDERS_TOPIC, "unknown_status")
    }
    not_json = [m for m in malformed if kind_of(m) == "not_json"]
    assert any(m.key is None for m in not_json) and any(m.key is not None for m in not_json)
    assert all(m.key is not None for m in malformed if kind_of(m) != "not_json")


def test_orders_follow_their_lifecycle(stream):
    orders: dict[bytes, list[dict]] = {}
    for message in stream:
        if message.topic == ORDERS_TOPIC and not message.malformed:
            orders.setdefault(message.key, []).append(json.loads(message.value))
    assert sum(len(events) > 1 for events in orders.values()) > len(orders) / 3
    statuses = {event["status"] for events in orders.values() for event in events}
    assert statuses == set(ORDER_STATUSES)
    for events in orders.values():
        seen = [e["status"] for e in events]
        assert len(seen) == len(set(seen)), seen
        assert not {"shipped", "cancelled"} <= set(seen) and not {"paid", "cancelled"} <= set(seen)
        fixed = {
            json.dumps([e[f] for f in ("customer_id", "items", "amount", "currency")])
            for e in events
        }
        assert len(fixed) == 1
        by_lifecycle = sorted(events, key=lambda e: RANK[e["status"]])
        times = [event_time(e) for e in by_lifecycle]
        assert times == sorted(times) and len(set(times)) == len(times)


def test_stream_has_late_and_out_of_order_events(stream):
    latest = datetime.min.replace(tzinfo=UTC)
    behind = 0
    arrivals: dict[bytes, list[datetime]] = {}
    for message in stream:
        if message.malformed:
            continue
        t = event_time(json.loads(message.value))
        behind += t < latest
        latest = max(latest, t)
        if message.topic == ORDERS_TOPIC:
            arrivals.setdefault(message.key, []).append(t)
    assert behind > 100
    # Some order's later-lifecycle event arrives first, so consumers must keep the latest by time.
    assert any(times != sorted(times) for times in arrivals.values())


def test_late_events_trail_the_clock_by_30s_to_5min():
    config = GeneratorConfig(late_fraction=0.1, events_per_second=5.0, malformed_fraction=0.0)
    lags = []
    for i, message in enumerate(generate(20_000, config, START)):
        clock = START + timedelta(milliseconds=int(i * 1000 / config.events_per_second))
        lags.append((clock - event_time(json.loads(message.value))).total_seconds())
    late = [lag for lag in lags if lag >= 30]
    assert len(late) / len(lags) == pytest.approx(0.1, abs=0.02)
    assert max(late) <= 300


def test_lazy_and_bounded_memory():
    began = time.monotonic()
    assert next(generate(10_000_000, GeneratorConfig(), START)).topic
    assert time.monotonic() - began < 1.0
    # 30k messages span 10 min of event time, past every lifecycle and late hold-back, so the
    # pools are at their steady size; kept in a list they would take ~14 MB.
    messages = generate(30_000, GeneratorConfig(), START)
    tracemalloc.start()
    try:
        for _ in messages:
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000, f"peak {peak} bytes: the generator holds on to messages"


def test_summarize_counts_per_topic(stream):
    summary = summarize(stream)
    assert sum(s["messages"] for s in summary.values()) == len(stream)
    assert summary[ORDERS_TOPIC]["malformed"] == sum(
        m.malformed for m in stream if m.topic == ORDERS_TOPIC
    )
    assert summarize([]) == {
        t: {"messages": 0, "malformed": 0} for t in (ORDERS_TOPIC, PAGE_VIEWS_TOPIC)
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("malformed_fraction", -0.1),
        ("malformed_fraction", 1.5),
        ("late_fraction", 1.0),
        ("late_fraction", float("nan")),
        ("page_view_ratio", -1.0),
        ("events_per_second", 0.0),
        ("start_time", datetime(2026, 1, 1)),
    ],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        GeneratorConfig(**{field: value})


@pytest.mark.parametrize(
    "start", [datetime(2026, 1, 1), datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=1)))]
)
def test_start_time_must_be_utc(start):
    with pytest.raises(ValueError, match="start_time"):
        generate(1, GeneratorConfig(), start)


def test_negative_count_is_rejected():
    with pytest.raises(ValueError, match="count"):
        generate(-1, GeneratorConfig(), START)
    assert list(itertools.islice(generate(0, GeneratorConfig(), START), 1)) == []


def test_generator_statuses_are_the_ones_the_orders_yaml_allows():
    """The generator is the shop's producer side; the YAML is the consumer's contract."""
    from kafka_assets.definitions import pipelines

    orders = next(p for p in pipelines if p.topic.name == ORDERS_TOPIC)
    assert tuple(orders.format.fields["status"].allowed) == ORDER_STATUSES


def test_first_id_continues_the_sequence_instead_of_reusing_ids():
    first = list(generate(2_000, GeneratorConfig(seed=1, malformed_fraction=0.0), START))
    later = list(
        generate(500, GeneratorConfig(seed=2, malformed_fraction=0.0, first_id=2_000), START)
    )

    def ids(messages, field):
        return {json.loads(m.value)[field] for m in messages if field in json.loads(m.value)}

    for field in ("order_id", "session_id"):
        assert ids(first, field) and ids(later, field)
        assert not ids(first, field) & ids(later, field)
        assert min(int(i.split("-")[1]) for i in ids(later, field)) > 2_000
