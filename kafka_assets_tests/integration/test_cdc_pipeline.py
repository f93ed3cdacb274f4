"""The legacy shop, end to end: PostgreSQL -> Debezium in Kafka Connect -> the offsets sensor ->
Spark -> mirror tables, on the real worker and source database.

Snapshot, inserts, updates, soft and hard deletes, a kill -9 of the Connect worker during a
burst of changes, a column added in the source and a malformed event: after each, the source and
the warehouse hold the same rows (the `*_matches_source` checks, compared once caught up).
"""

import os
import signal
import threading
import time
import uuid

import dagster as dg
import psycopg
import pytest
from confluent_kafka import Producer

from kafka_assets import runner
from kafka_assets.cdc.connect import ConnectError, KafkaConnectResource, SourceDatabaseResource
from kafka_assets.local.connect_worker import HOST
from kafka_assets.local.procs import port_open
from kafka_assets.local.services import LocalServices

pytestmark = pytest.mark.integration

CONNECTOR = dg.AssetKey(["connect", "legacy_shop"])
SLOT = "kafka_assets_legacy"
TABLES = ("customers", "products", "orders")


def _ok(result: dg.ExecuteInProcessResult) -> dg.ExecuteInProcessResult:
    failures = [e.message for e in result.all_events if e.is_failure]
    assert result.success, failures[:3]
    return result


def _evaluations(result) -> dict[str, tuple[bool, dict]]:
    out = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            data = event.event_specific_data
            meta = {k: getattr(v, "value", v) for k, v in data.metadata.items()}
            out[data.check_name] = (data.passed, meta)
    return out


def _drop_slot(dsn: str, timeout: float = 30.0) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        deadline = time.monotonic() + timeout
        while True:
            row = conn.execute(
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (SLOT,)
            ).fetchone()
            if row is None:
                return
            if not row[0]:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (SLOT,))
                return
            assert time.monotonic() < deadline, f"slot {SLOT} still active"
            time.sleep(0.25)


def _sync(instance, source_dsn: str) -> dict[str, tuple[bool, dict]]:
    """Wait for Debezium to catch up, then do what the daemon would: tick, run the request."""
    # A marker in the WAL the slot must pass: snapshot done and every change in Kafka.
    SourceDatabaseResource(dsn=source_dsn).wait_caught_up(SLOT, timeout_s=120)
    tick = runner.tick(instance)
    assert isinstance(tick, dg.SensorResult), getattr(tick, "skip_message", tick)
    checks: dict[str, tuple[bool, dict]] = {}
    for request in tick.run_requests:
        assert CONNECTOR not in request.asset_selection  # the sensor never re-puts the connector
        checks.update(_evaluations(_ok(runner.run_request(instance, request))))
    return checks


def _assert_matches(checks, tables=TABLES) -> None:
    for table in tables:
        passed, meta = checks[f"legacy_{table}_matches_source"]
        assert meta["compared"] and passed, (table, meta)
        assert meta["source_rows"] == meta["warehouse_rows"], meta


def _warehouse(env, query: str, params=None):
    with psycopg.connect(env["WAREHOUSE_DSN"]) as conn:
        conn.execute(f'SET search_path TO "{env["WAREHOUSE_SCHEMA"]}"')
        return conn.execute(query, params).fetchall()


def test_legacy_tables_mirror_through_debezium(pipeline_env, services):
    env = pipeline_env
    source_dsn = env["SOURCE_DSN"]
    connect = KafkaConnectResource(url=env["CONNECT_URL"])
    run = uuid.uuid4().hex[:6]
    base = 3_000_000 + int(run, 16) % 1_000_000 * 10
    column = f"loyalty_{run}"
    connect.delete("legacy_shop")
    _drop_slot(source_dsn)
    instance = dg.DagsterInstance.ephemeral()
    source = psycopg.connect(source_dsn, autocommit=True)
    figures: dict[str, float] = {"worker_start_s": services.timings.get("connect_start_s", 0.0)}
    try:
        # The connector, as an asset: config put, RUNNING, the password only by reference.
        began = time.monotonic()
        result = _ok(runner.materialize(instance, [CONNECTOR]))
        figures["connector_asset_s"] = time.monotonic() - began
        md = result.asset_materializations_for_node("connect__legacy_shop")[0].metadata
        figures["connector_to_running_s"] = md["running_after_s"].value
        assert md["connector_state"].value == "RUNNING"
        assert set(md["task_states"].value.values()) == {"RUNNING"}
        assert md["worker_id"].value and md["confirmed_flush_lsn"].value
        stored = connect.stored_config("legacy_shop")
        assert stored["database.password"] == "${env:SOURCE_CDC_PASSWORD}"
        secret = services.source_cdc_password
        assert secret not in str(stored) and secret not in str(dict(md))

        # Snapshot ---------------------------------------------------------------------------
        checks = _sync(instance, source_dsn)
        _assert_matches(checks)
        assert all(checks[f"legacy_{t}_replication_lag"][0] for t in TABLES), checks
        ops = dict(_warehouse(env, "SELECT _cdc_op, count(*) FROM legacy_products GROUP BY 1"))
        assert set(ops) == {"r"}, ops

        # Inserts, updates, deletes: soft (customers) and hard (products) ---------------------
        began = time.monotonic()
        changes = 0
        with source.transaction():
            for i in range(300):
                source.execute(
                    "INSERT INTO shop.customers (customer_id, email, full_name) VALUES (%s,%s,%s)",
                    (base + i, f"{run}-{i}@example.com", f"Customer {i}"),
                )
                source.execute(
                    "INSERT INTO shop.products (product_id, sku, name, price) VALUES (%s,%s,%s,%s)",
                    (base + i, f"{run}-{i}", f"Product {i}", i / 4),
                )
                changes += 2
        for i in range(0, 300, 2):
            source.execute(
                "UPDATE shop.customers SET full_name = %s WHERE customer_id = %s",
                (f"Renamed {i}", base + i),
            )
            source.execute(
                "UPDATE shop.products SET price = price + 1 WHERE product_id = %s", (base + i,)
            )
            changes += 2
        for i in range(0, 300, 3):
            source.execute("DELETE FROM shop.customers WHERE customer_id = %s", (base + i,))
            source.execute("DELETE FROM shop.products WHERE product_id = %s", (base + i,))
            changes += 2
        checks = _sync(instance, source_dsn)
        figures["changes"] = changes
        figures["changes_per_s"] = changes / (time.monotonic() - began)
        _assert_matches(checks, ("customers", "products"))  # the topics that moved
        soft = _warehouse(
            env,
            "SELECT count(*) FILTER (WHERE _deleted), count(*) FILTER (WHERE full_name LIKE"
            " 'Renamed%%' AND NOT _deleted) FROM legacy_customers WHERE customer_id >= %s",
            (base,),
        )[0]
        assert soft == (100, 100), soft  # deleted rows stay, marked; renamed ones updated
        hard = _warehouse(
            env, "SELECT count(*) FROM legacy_products WHERE product_id >= %s", (base,)
        )[0][0]
        assert hard == 200
        tombstones = _warehouse(env, "SELECT count(*) FROM _legacy_products_deletes")[0][0]
        assert tombstones >= 100

        # kill -9 of the worker during a burst: nothing lost, nothing doubled ----------------
        services_ = LocalServices(
            state_dir=services.state_dir,
            connect_port=int(env["CONNECT_URL"].rsplit(":", 1)[1]),
            environ={"SOURCE_CDC_PASSWORD": services.source_cdc_password},
        )
        worker = services_.connect_worker(services.bootstrap_servers)
        pid = worker.pid()
        assert pid, "the session's Connect worker is not running"
        burst_done = threading.Event()
        burst_changes = [0]

        def burst():
            with psycopg.connect(source_dsn, autocommit=True) as conn:
                for i in range(1000, 2500):
                    conn.execute(
                        "INSERT INTO shop.products (product_id, sku, name, price)"
                        " VALUES (%s, %s, %s, 1)",
                        (base + i, f"{run}-{i}", f"Burst {i}"),
                    )
                    conn.execute(
                        "UPDATE shop.products SET price = 2 WHERE product_id = %s", (base + i,)
                    )
                    burst_changes[0] += 2
                    if i % 4 == 0:
                        conn.execute("DELETE FROM shop.products WHERE product_id = %s", (base + i,))
                        burst_changes[0] += 1
            burst_done.set()

        began = time.monotonic()
        writer = threading.Thread(target=burst, daemon=True)
        writer.start()
        time.sleep(1.0)
        os.kill(pid, signal.SIGKILL)
        killed_at = burst_changes[0]
        deadline = time.monotonic() + 30
        # Gone, and its REST port closed with it (the kernel tears a JVM down in a moment).
        while worker.pid() is not None or port_open(HOST, worker.port):
            assert time.monotonic() < deadline, "the killed worker is still alive"
            time.sleep(0.1)
        figures["worker_restart_s"] = worker.start()
        _, figures["connector_running_after_restart_s"] = connect.wait_running("legacy_shop")
        assert burst_done.wait(120)
        checks = _sync(instance, source_dsn)
        figures["burst_changes"] = burst_changes[0]
        figures["burst_changes_killed_at"] = killed_at
        figures["burst_changes_per_s_with_kill"] = burst_changes[0] / (time.monotonic() - began)
        _assert_matches(checks, ("products",))
        burst = _warehouse(
            env,
            "SELECT count(*), count(*) FILTER (WHERE price = 2) FROM legacy_products"
            " WHERE product_id >= %s",
            (base + 1000,),
        )[0]
        assert burst == (1125, 1125), burst  # 1500 inserted, 375 deleted, all updated

        # A column added in the source reaches the mirror ------------------------------------
        source.execute(f"ALTER TABLE shop.customers ADD COLUMN {column} integer")
        source.execute(
            f"UPDATE shop.customers SET {column} = customer_id %% 7 WHERE customer_id >= %s",
            (base,),
        )
        checks = _sync(instance, source_dsn)
        _assert_matches(checks, ("customers",))
        assert column in checks["legacy_customers_matches_source"][1]["columns_compared"]
        got = _warehouse(
            env,
            f"SELECT count(*) FROM legacy_customers WHERE {column} = customer_id % 7"
            " AND NOT _deleted",
        )[0][0]
        assert got == 200
        table_md = instance.get_latest_materialization_event(
            dg.AssetKey(["warehouse", "legacy_customers"])
        ).asset_materialization.metadata
        assert column in table_md["columns_added"].value

        # A malformed event goes to the quarantine, with its reason ----------------------------
        producer = Producer({"bootstrap.servers": services.bootstrap_servers})
        producer.produce("legacy.shop.products", key=b'{"oops": 1}', value=b"{not json")
        producer.flush(10)
        _sync(instance, source_dsn)
        reasons = _warehouse(env, "SELECT reason FROM legacy_quarantine")
        assert [r[0] for r in reasons] == ["not a Debezium change event (invalid JSON?)"]
        print(
            "\nCDC figures: "
            + ", ".join(
                f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
            )
        )
    finally:
        try:
            connect.delete("legacy_shop")
        except (OSError, ConnectError):
            pass  # a worker that did not come back: the session's teardown stops it anyway
        _drop_slot(source_dsn)
        source.execute(f"ALTER TABLE shop.customers DROP COLUMN IF EXISTS {column}")
        source.execute("DELETE FROM shop.customers WHERE customer_id >= %s", (base,))
        source.execute("DELETE FROM shop.products WHERE product_id >= %s", (base,))
        source.close()
