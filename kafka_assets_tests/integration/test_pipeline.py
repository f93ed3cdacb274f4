"""Produce -> sensor tick -> run -> tables, twice, on the real broker, Spark and PostgreSQL."""

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from kafka_assets import runner
from kafka_assets.shop.generator import GeneratorConfig, generate
from kafka_assets.spark.streams import checkpoint_position

pytestmark = pytest.mark.integration

START = "2026-11-24T10:00:00Z"


def _run(selection, instance, checks=None, run_config=None, tags=None):
    result = runner.materialize(instance, selection, checks, run_config, tags)
    assert result.success
    return result


def _produce(instance, count: int, seed: int) -> dict:
    result = _run(
        [dg.AssetKey(["kafka", "shop_events"])],
        instance,
        run_config={
            "ops": {
                "kafka__shop_events": {
                    "config": {
                        "count": count,
                        "seed": seed,
                        "start_time": START,
                        "malformed_fraction": 0.02,
                    }
                }
            }
        },
    )
    md = result.asset_materializations_for_node("kafka__shop_events")[0].metadata
    return {"acked": md["per_topic"].value, "malformed": md["malformed_sent"].value}


def _tick(instance, cursor):
    from kafka_assets.definitions import defs

    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"kafka": defs.resources["kafka"]}
    )
    return defs.resolve_sensor_def("kafka_offsets_sensor")(context)


_checks = runner.check_results


def _expected(rounds: list[tuple[int, int]]):
    """Replay the generator: latest status per order by (event_time, arrival), valid page views,
    and paid revenue per minute and currency over every valid event."""
    start = datetime.fromisoformat(START.replace("Z", "+00:00")).astimezone(UTC)
    latest: dict[str, tuple[str, int, str]] = {}
    revenue: dict[tuple[datetime, str], list] = {}
    views = 0
    arrival = 0
    sent = 0
    for count, seed in rounds:
        # The producer continues ids after the messages the topics already hold.
        config = GeneratorConfig(seed=seed, malformed_fraction=0.02, first_id=sent)
        sent += count
        for m in generate(count, config, start):
            arrival += 1
            if m.malformed:
                continue
            doc = json.loads(m.value)
            if m.topic == "page_views":
                views += 1
                continue
            if doc["status"] == "paid":
                minute = datetime.fromisoformat(doc["event_time"]).replace(second=0, microsecond=0)
                total = revenue.setdefault((minute, doc["currency"]), [Decimal(0), 0])
                total[0] += Decimal(str(doc["amount"]))
                total[1] += 1
            stamp = (doc["event_time"], arrival)
            if doc["order_id"] not in latest or stamp >= latest[doc["order_id"]][:2]:
                latest[doc["order_id"]] = (doc["event_time"], arrival, doc["status"])
    return {k: v[2] for k, v in latest.items()}, views, {k: tuple(v) for k, v in revenue.items()}


def _revenue(env) -> dict:
    rows = _query(env, "SELECT window_start, currency, revenue, orders FROM revenue_per_minute")
    return {(w, c): (r, n) for w, c, r, n in rows}


def _query(env, sql_text):
    with psycopg.connect(env["WAREHOUSE_DSN"]) as conn:
        conn.execute(f'SET search_path TO "{env["WAREHOUSE_SCHEMA"]}"')
        return conn.execute(sql_text).fetchall()


def test_produce_sense_run_twice_then_skip(pipeline_env):
    env = pipeline_env
    instance = dg.DagsterInstance.ephemeral()
    _run([dg.AssetKey(["kafka", "orders"]), dg.AssetKey(["kafka", "page_views"])], instance)

    # Round 1 -------------------------------------------------------------------------------
    sent1 = _produce(instance, 3000, seed=11)
    tick1 = _tick(instance, None)
    assert isinstance(tick1, dg.SensorResult) and len(tick1.run_requests) == 1
    request = tick1.run_requests[0]
    result = _run(request.asset_selection, instance, request.asset_check_keys)
    checks = _checks(result)
    assert checks and all(checks.values()), checks
    assert "kafka/orders:consumer_lag" in checks
    # Each table loads as soon as its stream is staged, before any aggregate is computed: the
    # messages are queryable before the run is half done.
    started = [e.step_key for e in result.all_events if e.event_type_value == "STEP_START"]
    for rows in ("warehouse__orders", "warehouse__page_views", "warehouse__quarantine"):
        for totals in ("spark__page_view_counts", "warehouse__revenue_per_minute"):
            assert started.index(rows) < started.index(totals), started
    assert "spark__revenue_per_minute" not in started  # its totals come from orders_events

    latest, views, revenue = _expected([(3000, 11)])
    assert _revenue(env) == revenue  # every valid paid event, each counted once
    got = dict(_query(env, "SELECT order_id, status FROM orders"))
    assert got == latest  # latest state by event time, late events did not overwrite
    assert _query(env, "SELECT count(*) FROM page_views")[0][0] == views
    malformed1 = sum(sent1["malformed"].values())
    assert _query(env, "SELECT count(*) FROM quarantine")[0][0] == malformed1
    assert _query(env, "SELECT count(*) FROM quarantine WHERE raw_value IS NULL")[0][0] == 0

    first = instance.get_latest_materialization_event(dg.AssetKey(["spark", "orders_events"]))
    first_end = first.asset_materialization.metadata["end_offsets"].value
    assert sum(first_end.values()) == sent1["acked"]["orders"]
    # The first batch of a new query starts at the log start offset, not at "?".
    first_md = first.asset_materialization.metadata
    assert first_md["start_offsets"].value == {p: 0 for p in first_end}
    assert first_md["consumed_ranges"].value == {p: f"0-{o}" for p, o in first_end.items()}
    assert first_md["batches"].value == len(first_md["batch_details"].value) >= 1
    assert first_md["lag_messages"].value == 0  # everything produced was read
    # The position recorded is the checkpoint's own: its last committed batch's offsets.
    assert checkpoint_position(first_md["checkpoint"].value, "orders") == first_end
    # The topic ran in the same request: its page shows the offsets this run started from.
    topic = instance.get_latest_materialization_event(dg.AssetKey(["kafka", "orders"]))
    topic_md = topic.asset_materialization.metadata
    assert topic_md["messages_total"].value == sent1["acked"]["orders"]
    # How old the newest message was when the table committed it: a number the UI plots.
    table = instance.get_latest_materialization_event(dg.AssetKey(["warehouse", "orders"]))
    age = table.asset_materialization.metadata["newest_message_to_load_s"].value
    assert 0 < age < 600, age
    counts = instance.get_latest_materialization_event(dg.AssetKey(["spark", "page_view_counts"]))
    assert counts.asset_materialization.metadata["watermark"].value.startswith("2026-11-24")

    # Round 2: only the new offsets are processed --------------------------------------------
    sent2 = _produce(instance, 1000, seed=12)
    tick2 = _tick(instance, tick1.cursor)
    assert isinstance(tick2, dg.SensorResult)
    request2 = tick2.run_requests[0]
    assert request2.run_key != request.run_key
    result2 = _run(request2.asset_selection, instance, request2.asset_check_keys)
    assert all(_checks(result2).values()), _checks(result2)

    second = instance.get_latest_materialization_event(dg.AssetKey(["spark", "orders_events"]))
    md = second.asset_materialization.metadata
    assert md["start_offsets"].value == {
        p: o for p, o in first_end.items() if p in md["start_offsets"].value
    }
    assert md["input_rows"].value == sent2["acked"]["orders"]

    latest, views, revenue = _expected([(3000, 11), (1000, 12)])
    assert dict(_query(env, "SELECT order_id, status FROM orders")) == latest
    assert _revenue(env) == revenue  # round 2's partial totals were added, not substituted
    assert len(latest) > len(_expected([(3000, 11)])[0])  # round 2 added orders, new ids
    assert _query(env, "SELECT count(*) FROM page_views")[0][0] == views
    assert _query(env, "SELECT count(*) FROM quarantine")[0][0] == malformed1 + sum(
        sent2["malformed"].values()
    )

    # Staging retention: every table reading a stream has each batch in the ledger, so no
    # staged batch is kept (the run reports stay), and disk does not grow with the topic.
    staging = Path(env["SPARK_STAGING_BASE"])
    for stream in ("orders_events", "page_view_counts", "page_views_events"):
        assert not list((staging / stream).glob("query=*/batch=*")), stream
        assert list((staging / stream / "_runs").glob("*.json")), stream
    deleted = [
        instance.get_latest_materialization_event(dg.AssetKey(["warehouse", t]))
        .asset_materialization.metadata["staged_batches_deleted"]
        .value
        for t in ("orders", "quarantine", "revenue_per_minute")
    ]
    assert sum(deleted) > 0, deleted

    # Loading again changes nothing: what was loaded is in the ledger and no longer staged.
    before = _query(env, "SELECT count(*) FROM orders")[0][0]
    again = _run([dg.AssetKey(["warehouse", "orders"])], instance)
    out = again.asset_materializations_for_node("warehouse__orders")[0].metadata
    assert out["batches_loaded"].value == 0
    assert _query(env, "SELECT count(*) FROM orders")[0][0] == before

    # A stream run with nothing new says so: no batch, no rows, its position unchanged.
    idle = _run([dg.AssetKey(["spark", "page_views_events"])], instance, checks=[])
    idle_md = idle.asset_materializations_for_node("spark__page_views_events")[0].metadata
    assert idle_md["input_rows"].value == 0 and idle_md["batch_details"].value == []
    assert idle_md["consumed_ranges"].value == {}

    # Round 3: nothing new, the sensor says what it saw and keeps its cursor ------------------
    tick3 = _tick(instance, tick2.cursor)
    assert isinstance(tick3, dg.SkipReason)
    assert "orders" in tick3.skip_message
