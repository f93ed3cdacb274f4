"""Change data capture is real: Debezium in the local Kafka Connect worker reads the legacy
PostgreSQL through pgoutput and its publication, and every change arrives in Kafka as JSON with
its schema.
"""

import json
import time
import uuid

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg import sql

from kafka_assets.local.connect_worker import connect_request
from kafka_assets.local.legacy_source import SCHEMA, TABLES, debezium_postgres_config

pytestmark = pytest.mark.integration


def _wait_running(connect_url: str, name: str, timeout: float = 90.0) -> float:
    """Seconds until the connector and its one task are RUNNING; a FAILED task fails fast."""
    started = time.monotonic()
    body = None
    while time.monotonic() - started < timeout:
        status, body = connect_request(f"{connect_url}/connectors/{name}/status")
        if status == 200:
            tasks = body.get("tasks") or []
            failed = [t for t in tasks if t["state"] == "FAILED"]
            assert not failed, f"connector task failed: {failed[0].get('trace', '')[:2000]}"
            if body["connector"]["state"] == "RUNNING" and [t["state"] for t in tasks] == [
                "RUNNING"
            ]:
                return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"connector {name} not RUNNING after {timeout:.0f}s: {body}")


def _wait_topics(admin: AdminClient, topics: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not set(topics) <= set(admin.list_topics(timeout=10).topics):
        assert time.monotonic() < deadline, f"topics {topics} were not created in {timeout:.0f}s"
        time.sleep(0.25)


def _consume_until(consumer: Consumer, seen: list, done, timeout: float = 60.0) -> None:
    """Append (topic, key, value) of every message to `seen` until `done(seen)` holds."""
    deadline = time.monotonic() + timeout
    while not done(seen):
        assert time.monotonic() < deadline, f"gave up after {timeout:.0f}s with {len(seen)} msgs"
        for msg in consumer.consume(100, timeout=0.5):
            assert msg.error() is None, msg.error()
            value = msg.value()
            seen.append(
                (
                    msg.topic(),
                    json.loads(msg.key()),
                    None if value is None else json.loads(value),
                )
            )


def _drop_slot(source_dsn: str, slot: str, timeout: float = 30.0) -> None:
    """The slot outlives the connector and would hold WAL forever; it frees once the task stops."""
    conn = psycopg.connect(source_dsn, autocommit=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            row = conn.execute(
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            ).fetchone()
            if row is None:
                return
            if not row[0]:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                return
            assert time.monotonic() < deadline, f"slot {slot} still active after {timeout:.0f}s"
            time.sleep(0.25)
    finally:
        conn.close()


def test_debezium_streams_snapshot_and_changes_with_schemas(services):
    run = uuid.uuid4().hex[:8]
    name, slot, prefix = f"legacy-{run}", f"kafka_assets_{run}", f"cdc{run}"
    topics = [f"{prefix}.{SCHEMA}.{table}" for table in TABLES]
    customers = topics[0]
    config = debezium_postgres_config(
        services.source_dsn,
        user=services.source_cdc_user,
        password=services.source_cdc_password,
        topic_prefix=prefix,
        slot_name=slot,
    )
    print(f"\nconnect worker ready after {services.timings.get('connect_start_s', 0.0):.1f}s")
    status, body = connect_request(
        f"{services.connect_url}/connectors", "POST", {"name": name, "config": config}
    )
    assert status == 201, body
    admin = AdminClient({"bootstrap.servers": services.bootstrap_servers, "log_level": 4})
    consumer = Consumer(
        {
            "bootstrap.servers": services.bootstrap_servers,
            "group.id": f"cdc-{run}",
            "enable.auto.commit": False,
        }
    )
    source = psycopg.connect(services.source_dsn, autocommit=True)
    try:
        running_s = _wait_running(services.connect_url, name)
        print(f"connector RUNNING after {running_s:.1f}s")

        # Snapshot: every existing row of every table, op "r", one topic per table.
        counts = {
            topic: source.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(SCHEMA, table))
            ).fetchone()[0]
            for topic, table in zip(topics, TABLES, strict=True)
        }
        assert all(counts.values()), f"the seed rows are missing: {counts}"
        _wait_topics(admin, topics)
        consumer.assign([TopicPartition(t, 0, OFFSET_BEGINNING) for t in topics])
        seen: list = []
        _consume_until(
            consumer,
            seen,
            lambda s: all(sum(m[0] == t for m in s) >= n for t, n in counts.items()),
        )
        for _topic, key, value in seen:
            assert set(value) == {"schema", "payload"}, "value.converter.schemas.enable=true"
            assert set(key) == {"schema", "payload"}, "key.converter.schemas.enable=true"
            assert value["schema"]["name"].endswith(".Envelope")
            assert value["payload"]["op"] == "r"
            assert value["payload"]["after"] is not None
        snapshot_ids = {v["payload"]["after"]["customer_id"] for t, _, v in seen if t == customers}
        assert snapshot_ids >= {1, 2, 3}

        # Streaming: insert, update and delete one customer; each its own transaction.
        customer_id = 1_000_000 + int(run, 16) % 1_000_000
        source.execute(
            "INSERT INTO shop.customers (customer_id, email, full_name) VALUES (%s, %s, %s)",
            (customer_id, f"{run}@example.com", "Barbara Liskov"),
        )
        source.execute(
            "UPDATE shop.customers SET full_name = %s WHERE customer_id = %s",
            ("Barbara J. Liskov", customer_id),
        )
        source.execute("DELETE FROM shop.customers WHERE customer_id = %s", (customer_id,))

        def ours(s):
            return [
                (k, v)
                for t, k, v in s
                if t == customers and k["payload"]["customer_id"] == customer_id
            ]

        _consume_until(consumer, seen, lambda s: len(ours(s)) >= 4)
        changes = ours(seen)
        ops = [v["payload"]["op"] if v is not None else None for _, v in changes]
        assert ops == ["c", "u", "d", None], ops  # None: the delete's tombstone
        created, updated, deleted = (v["payload"] for _, v in changes[:3])
        assert created["before"] is None and created["after"]["full_name"] == "Barbara Liskov"
        # REPLICA IDENTITY FULL: the update and the delete carry the whole old row.
        assert updated["before"] == created["after"]
        assert updated["after"]["full_name"] == "Barbara J. Liskov"
        assert deleted["before"] == updated["after"] and deleted["after"] is None
        lsns = [p["source"]["lsn"] for p in (created, updated, deleted)]
        assert lsns == sorted(set(lsns)), f"source.lsn does not increase: {lsns}"
        for payload in (created, updated, deleted):
            assert payload["source"]["db"] == "legacy"
            assert (payload["source"]["schema"], payload["source"]["table"]) == (
                SCHEMA,
                "customers",
            )
    finally:
        consumer.close()
        source.close()
        status, _ = connect_request(f"{services.connect_url}/connectors/{name}", "DELETE")
        assert status in (204, 404)
        _drop_slot(services.source_dsn, slot)
        for future in admin.delete_topics(topics, operation_timeout=30).values():
            try:
                future.result()
            except Exception:  # noqa: BLE001 - a topic never created is fine to miss
                pass
