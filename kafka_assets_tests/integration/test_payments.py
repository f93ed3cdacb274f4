"""The acceptance of declarative pipelines, on the real broker, Spark and PostgreSQL.

A new topic is declared in one YAML file and nothing else; it is filled by a producer outside the
project (a plain confluent_kafka Producer); a sensor-driven run lands the rows, quarantines the
malformed ones with their offsets, and passes its checks.
"""

import json
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import dagster as dg
import psycopg
import pytest
from confluent_kafka import Producer

from kafka_assets import runner
from kafka_assets.definitions import build_definitions
from kafka_assets_tests.pipelines import HERE, defs_package

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
METHODS = ("card", "paypal", "transfer")


def payment_stream(count: int, seed: int = 5) -> list[tuple[str | None, bytes, bool]]:
    """(key, value, malformed): authorized then captured (and sometimes refunded); some arrive
    late (captured before authorized); about 4 % are broken in ways a real feed breaks."""
    rng = random.Random(seed)
    out: list[tuple[str | None, bytes, bool]] = []
    for i in range(count):
        pid, at = f"p-{i:05d}", START + timedelta(seconds=i)
        base = {
            "payment_id": pid,
            "order_id": f"o-{rng.randint(1, count // 2):05d}",
            "method": rng.choice(METHODS),
            "amount": round(rng.uniform(1, 500), 2),
            "meta": {"attempt": 1, "psp": rng.choice(["x", "y"])},
        }
        events = [{**base, "status": "authorized", "paid_at": at}]
        if rng.random() < 0.85:
            events.append({**base, "status": "captured", "paid_at": at + timedelta(seconds=20)})
            if rng.random() < 0.1:
                events.append({**base, "status": "refunded", "paid_at": at + timedelta(minutes=3)})
        if len(events) > 1 and rng.random() < 0.1:
            events[0], events[1] = events[1], events[0]  # late: the authorization arrives last
        for e in events:
            doc = {**e, "paid_at": e["paid_at"].isoformat(timespec="milliseconds")}
            value = json.dumps(doc).encode()
            roll = rng.random()
            if roll < 0.01:
                out.append((pid, value[: len(value) // 2], True))  # truncated
            elif roll < 0.02:
                out.append((pid, json.dumps({**doc, "method": "cash"}).encode(), True))
            elif roll < 0.03:
                out.append((pid, json.dumps({**doc, "amount": "12,50"}).encode(), True))
            elif roll < 0.04:
                out.append(
                    (
                        None,
                        json.dumps({k: v for k, v in doc.items() if k != "payment_id"}).encode(),
                        True,
                    )
                )
            else:
                out.append((pid, value, False))
    return out


def expected(stream) -> tuple[dict[str, str], int, dict[tuple[str, str], tuple[Decimal, int]]]:
    latest: dict[str, tuple[str, int, str]] = {}
    captured: dict[tuple[str, str], list] = defaultdict(lambda: [Decimal(0), 0])
    valid = 0
    for arrival, (_, value, malformed) in enumerate(stream):
        if malformed:
            continue
        valid += 1
        doc = json.loads(value)
        stamp = (doc["paid_at"], arrival)
        if doc["payment_id"] not in latest or stamp >= latest[doc["payment_id"]][:2]:
            latest[doc["payment_id"]] = (doc["paid_at"], arrival, doc["status"])
        if doc["status"] == "captured":
            minute = doc["paid_at"][:16]
            captured[(minute, doc["method"])][0] += Decimal(str(doc["amount"]))
            captured[(minute, doc["method"])][1] += 1
    return (
        {k: v[2] for k, v in latest.items()},
        valid,
        {k: (v[0], v[1]) for k, v in captured.items()},
    )


def query(env, text: str):
    with psycopg.connect(env["WAREHOUSE_DSN"]) as conn:
        conn.execute(f'SET search_path TO "{env["WAREHOUSE_SCHEMA"]}"')
        return conn.execute(text).fetchall()


def test_a_new_topic_declared_in_one_yaml_file(pipeline_env, tmp_path) -> None:
    env = pipeline_env
    defs, (pipeline,) = build_definitions(
        defs_package(tmp_path, {"payments": HERE / "payments.yaml"})
    )
    instance = dg.DagsterInstance.ephemeral()
    assert runner.materialize(instance, [pipeline.topic_key], defs=defs).success

    stream = payment_stream(1500)
    producer = Producer({"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"], "linger.ms": 5})
    for key, value, _ in stream:
        producer.produce("payments", value, key)
    assert producer.flush(30) == 0

    tick = runner.tick(instance, defs=defs)
    assert isinstance(tick, dg.SensorResult), tick
    (request,) = tick.run_requests
    result = runner.run_request(instance, request, defs=defs)
    assert result.success
    checks = runner.check_results(result)
    assert {
        "warehouse/payments:payments_events_reconciled",
        "warehouse/payments:payments_unique_keys",
        "kafka/payments:consumer_lag",
    } <= set(checks)
    assert all(checks.values()), checks

    latest, valid, captured = expected(stream)
    assert dict(query(env, "SELECT payment_id, status FROM payments")) == latest
    assert query(env, "SELECT count(*) FROM payment_events")[0][0] == valid
    rows = query(
        env,
        "SELECT to_char(window_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI'), method, "
        "captured, payments FROM captured_per_minute",
    )
    assert {(m, meth): (c, n) for m, meth, c, n in rows} == captured

    malformed = sum(1 for *_, bad in stream if bad)
    quarantined = query(
        env,
        "SELECT source_partition, source_offset, reason FROM quarantine WHERE topic = 'payments'",
    )
    assert len(quarantined) == malformed > 20
    assert len({(p, o) for p, o, _ in quarantined}) == malformed  # each with its own position
    reasons = {r.split(":")[0] for *_, r in quarantined}
    assert reasons == {"invalid JSON", "invalid method", "invalid amount", "missing field"}

    again = runner.tick(instance, defs=defs, cursor=tick.cursor)
    assert isinstance(again, dg.SkipReason)
