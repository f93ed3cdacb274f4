"""Poison messages on the real broker: each lands in quarantine with its position and a reason,
and the valid messages around them still land. Nothing else stops."""

import json

import dagster as dg
import psycopg
import pytest
from confluent_kafka import Producer

from kafka_assets import runner

pytestmark = pytest.mark.integration


def _order(order_id: str, **changes) -> dict:
    doc = {
        "event_id": f"e-{order_id}",
        "order_id": order_id,
        "status": "paid",
        "customer_id": "c-1",
        "items": [{"sku": "KB-001", "quantity": 1, "unit_price": 49.9}],
        "amount": 49.9,
        "currency": "EUR",
        "event_time": "2026-11-24T10:00:00Z",
    }
    doc.update(changes)
    return doc


def _text(doc: dict) -> bytes:
    return json.dumps(doc).encode()


VALID = _text(_order("o-valid"))
POISON = {
    "invalid UTF-8": (b"k", b'{"order_id": "\xff\xfe"}', "invalid UTF-8"),
    "empty value": (b"k", b"", "empty message value"),
    "tombstone, null key": (None, None, "empty message value"),
    "deeply nested": (b"k", b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "invalid JSON"),
    "near max.message.bytes": (b"k", _text({"pad": "x" * 900_000}), "missing field"),
    "number out of range": (
        b"k",
        _text(_order("o-big")).replace(b"49.9,", b"1e999,", 1),
        "invalid amount",
    ),
    "NaN": (b"k", _text(_order("o-nan")).replace(b"49.9,", b"NaN,", 1), "invalid JSON"),
    "duplicated key": (b"k", b'{"order_id": "o-a", ' + _text(_order("o-b"))[1:], "invalid JSON"),
}
# Valid JSON of the declared types: no rule says a quantity must be positive, so it lands.
NEGATIVE = _text(_order("o-negative", items=[{"sku": "KB-001", "quantity": -3, "unit_price": 1.0}]))


def test_poison_lands_in_quarantine_with_position_and_reason(pipeline_env):
    env = pipeline_env
    instance = dg.DagsterInstance.ephemeral()
    assert runner.materialize(instance, [dg.AssetKey(["kafka", "orders"])]).success

    producer = Producer(
        {"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"], "message.max.bytes": 1_000_000}
    )
    positions: dict[str, tuple[int, int]] = {}

    def send(name: str, key, value) -> None:
        def delivered(err, msg) -> None:
            assert err is None, (name, err)
            positions[name] = (msg.partition(), msg.offset())

        producer.produce("orders", value=value, key=key, partition=0, on_delivery=delivered)
        producer.flush(30)

    send("valid before", b"o-valid", VALID)
    for name, (key, value, _) in POISON.items():
        send(name, key, value)
    send("negative quantity", b"o-negative", NEGATIVE)

    selection = [
        dg.AssetKey(["spark", "orders_events"]),
        dg.AssetKey(["warehouse", "orders"]),
        dg.AssetKey(["warehouse", "quarantine"]),
    ]
    result = runner.materialize(instance, selection)
    assert result.success

    with psycopg.connect(env["WAREHOUSE_DSN"]) as conn:
        conn.execute(f'SET search_path TO "{env["WAREHOUSE_SCHEMA"]}"')
        quarantined = {
            (p, o): reason
            for p, o, reason in conn.execute(
                "SELECT source_partition, source_offset, reason FROM quarantine"
            ).fetchall()
        }
        orders = {r[0] for r in conn.execute("SELECT order_id FROM orders").fetchall()}
    print()
    for name, (_, _, reason) in POISON.items():
        got = quarantined.get(positions[name])
        print(f"poison {name!r:28} at {positions[name]} -> {got!r}")
        assert got, f"{name} is not in quarantine"
        assert got.startswith(reason), (name, got)
    assert len(quarantined) == len(POISON)
    assert orders == {"o-valid", "o-negative"}
    checks = runner.check_results(result)
    assert checks["warehouse/orders:orders_events_reconciled"], checks


def test_a_hostile_schema_name_is_quoted_everywhere(pipeline_env, monkeypatch):
    """WAREHOUSE_SCHEMA with a quote, a space and SQL in it: every statement quotes it."""
    from kafka_assets.definitions import pipelines
    from kafka_assets.warehouse.report import table_summary
    from kafka_assets.warehouse.resources import PostgresResource

    schema = f'we"ird {pipeline_env["WAREHOUSE_SCHEMA"]}; DROP TABLE x; --'
    monkeypatch.setenv("WAREHOUSE_SCHEMA", schema)
    instance = dg.DagsterInstance.ephemeral()
    topic = dg.AssetKey(["kafka", "page_views"])
    assert runner.materialize(instance, [topic]).success
    producer = Producer({"bootstrap.servers": pipeline_env["KAFKA_BOOTSTRAP_SERVERS"]})
    view = {
        "event_id": "v-1",
        "session_id": "s-1",
        "user_id": "u-1",
        "page": "/",
        "event_time": "2026-11-24T10:00:00Z",
    }
    producer.produce("page_views", json.dumps(view).encode(), b"s-1")
    producer.produce("page_views", b"not json", b"s-2")
    producer.flush(10)

    selection = [
        dg.AssetKey(["spark", "page_views_events"]),
        dg.AssetKey(["warehouse", "page_views"]),
        dg.AssetKey(["warehouse", "quarantine"]),
    ]
    result = runner.materialize(instance, selection)
    assert result.success
    assert all(runner.check_results(result).values()), runner.check_results(result)
    warehouse = PostgresResource(dsn=pipeline_env["WAREHOUSE_DSN"], schema_name=schema)
    tables = [t.name for p in pipelines for t in p.tables]
    summary = table_summary(warehouse, tables, ["quarantine"])
    assert "page_views" in summary
    with psycopg.connect(pipeline_env["WAREHOUSE_DSN"]) as conn:
        names = [r[0] for r in conn.execute("SELECT nspname FROM pg_namespace").fetchall()]
        assert schema in names
        counts = conn.execute(
            psycopg.sql.SQL("SELECT (SELECT count(*) FROM {}), (SELECT count(*) FROM {})").format(
                psycopg.sql.Identifier(schema, "page_views"),
                psycopg.sql.Identifier(schema, "quarantine"),
            )
        ).fetchone()
    assert counts == (1, 1)
