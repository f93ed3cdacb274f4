"""Replay from an offset or a timestamp, and data deleted by retention before it was read.

Real broker, Spark and PostgreSQL. A replay must leave the warehouse equal to a clean rebuild over
the same messages; lost offsets must fail the stream and a check by name, and the opt-in must go on.
"""

import time
import uuid
from datetime import UTC, datetime, timedelta

import dagster as dg
import psycopg
import pytest

from kafka_assets import runner
from kafka_assets.local.services import write_dagster_yaml

pytestmark = pytest.mark.integration

ORDERS = dg.AssetKey(["kafka", "orders"])
EVENTS = dg.AssetKey(["spark", "orders_events"])
TABLES = [
    dg.AssetKey(["warehouse", "orders"]),
    dg.AssetKey(["warehouse", "revenue_per_minute"]),
    dg.AssetKey(["warehouse", "quarantine"]),
]
START = "2026-11-24T10:00:00Z"


def _ok(result: dg.ExecuteInProcessResult) -> dg.ExecuteInProcessResult:
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return result


def _produce(instance, count: int, seed: int) -> None:
    config = {"count": count, "seed": seed, "start_time": START, "malformed_fraction": 0.02}
    _ok(
        runner.materialize(
            instance,
            [dg.AssetKey(["kafka", "shop_events"])],
            run_config={"ops": {"kafka__shop_events": {"config": config}}},
        )
    )


def _metadata(instance, key: dg.AssetKey) -> dict:
    event = instance.get_latest_materialization_event(key)
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _dump(env: dict) -> dict[str, list]:
    """The orders tables as sets of rows, without load times."""
    out = {}
    with psycopg.connect(env["WAREHOUSE_DSN"]) as conn:
        conn.execute(f'SET search_path TO "{env["WAREHOUSE_SCHEMA"]}"')
        out["orders"] = conn.execute(
            "SELECT order_id, status, amount, event_time, source_partition, source_offset "
            "FROM orders ORDER BY order_id"
        ).fetchall()
        out["revenue_per_minute"] = conn.execute(
            "SELECT window_start, currency, revenue, orders FROM revenue_per_minute "
            "ORDER BY window_start, currency"
        ).fetchall()
        out["quarantine"] = conn.execute(
            "SELECT topic, source_partition, source_offset, reason FROM quarantine "
            "WHERE topic = 'orders' ORDER BY 1, 2, 3"
        ).fetchall()
    return out


def _check(instance, check: dg.AssetCheckKey):
    result = runner.materialize(instance, [], checks=[check])
    (evaluation,) = [
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    return evaluation


def _fresh_env(base: dict, tmp_path, name: str, monkeypatch) -> dict:
    env = dict(base)
    env["WAREHOUSE_SCHEMA"] = f"t_{uuid.uuid4().hex[:10]}"
    env["SPARK_CHECKPOINT_BASE"] = str(tmp_path / name / "checkpoints")
    env["SPARK_STAGING_BASE"] = str(tmp_path / name / "staging")
    env["DAGSTER_HOME"] = str(tmp_path / name / "dagster_home")
    write_dagster_yaml(tmp_path / name / "dagster_home", postgres=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def _replay_config(**stream_config) -> dict:
    """The `replay_orders` job's config: the replay point of the orders stream."""
    return {"ops": {"spark__orders_events": {"config": stream_config}}}


def test_replay_from_offsets_and_timestamp_equals_a_clean_rebuild(
    pipeline_env, tmp_path, monkeypatch
):
    from kafka_assets.definitions import defs

    instance = dg.DagsterInstance.ephemeral()
    _ok(runner.materialize(instance, [ORDERS]))
    _produce(instance, 1500, seed=21)
    time.sleep(1.5)  # a gap in Kafka timestamps between the two rounds
    between = datetime.now(UTC)
    time.sleep(1.5)
    _produce(instance, 1000, seed=22)
    _ok(runner.materialize(instance, [EVENTS, *TABLES]))
    ends = _metadata(instance, EVENTS)["end_offsets"]

    job = defs.resolve_job_def("replay_orders")
    assert {EVENTS, *TABLES} <= set(job.asset_layer.executable_asset_keys)

    # From offsets: partition 0 from 5, the others keep their position (nothing to do).
    _ok(
        job.execute_in_process(
            instance=instance,
            run_config=_replay_config(
                replay_from_offsets={"0": 5}, reason="test: offsets", requested_by="pytest"
            ),
        )
    )
    md = _metadata(instance, EVENTS)
    assert md["replay"]["start_offsets"]["0"] == 5
    assert md["replay"]["reason"] == "test: offsets" and md["replay"]["requested_by"] == "pytest"
    assert md["replay"]["previous_checkpoint"]
    assert md["input_rows"] == ends["0"] - 5
    assert md["end_offsets"] == ends  # the new checkpoint reached the same ends
    # The revenue totals skipped every replayed message: they had counted them already.
    folded = _metadata(instance, TABLES[1])
    assert folded["batches_loaded"] == 1 and folded["rows_in"] == 0

    # From a timestamp between the rounds: offsetsForTimes gives where round 2 began.
    _ok(
        job.execute_in_process(
            instance=instance,
            run_config=_replay_config(
                replay_from_timestamp=between.isoformat(), reason="test: timestamp"
            ),
        )
    )
    md = _metadata(instance, EVENTS)
    assert md["replay"]["resolved_by"] == "offsetsForTimes"
    assert 0 < md["input_rows"] < sum(ends.values())
    # An hour back: everything the log holds.
    hour_back = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    _ok(
        job.execute_in_process(
            instance=instance, run_config=_replay_config(replay_from_timestamp=hour_back)
        )
    )
    md = _metadata(instance, EVENTS)
    assert md["replay"]["start_offsets"] == {p: 0 for p in ends}
    assert md["input_rows"] == sum(ends.values())
    replayed = _dump(pipeline_env)
    # Three replays later, every offset is still accounted for exactly once per batch.
    reconciled = _check(instance, dg.AssetCheckKey(TABLES[0], "orders_events_reconciled"))
    assert reconciled.passed, reconciled.metadata["partitions"].value

    # A clean rebuild over the same messages: new schema, checkpoints and instance.
    clean_env = _fresh_env(pipeline_env, tmp_path, "clean", monkeypatch)
    clean = dg.DagsterInstance.get()
    _ok(runner.materialize(clean, [EVENTS, *TABLES]))
    rebuilt = _dump(clean_env)
    for table in rebuilt:
        assert rebuilt[table], table
        assert replayed[table] == rebuilt[table], table


def _wait_for_retention(kafka, topic: str, timeout: float = 60.0) -> float:
    """Wait until retention has deleted every message (each log start reached its end offset);
    returns the seconds it took. The local broker checks every 5 s."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if kafka.start_offsets([topic]) == kafka.end_offsets([topic]):
            return time.monotonic() - began
        time.sleep(0.5)
    raise AssertionError(f"retention deleted not all of {topic} within {timeout:.0f}s")


def test_retention_deleting_unread_offsets_fails_by_name_and_the_opt_in_goes_on(pipeline_env):
    """The topic's own retention.ms, a few seconds, deletes messages the stream has not read."""
    from kafka_assets.kafka.resources import KafkaResource

    env = pipeline_env
    instance = dg.DagsterInstance.ephemeral()
    _ok(runner.materialize(instance, [ORDERS]))
    _produce(instance, 300, seed=31)
    _ok(runner.materialize(instance, [EVENTS]))
    read = _metadata(instance, EVENTS)["end_offsets"]

    kafka = KafkaResource(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    _produce(instance, 300, seed=32)  # unread: retention deletes it before the stream runs
    # Set after producing: the producer asset reconciles the topic to its declared retention.ms
    # (7 days) before it sends, which would undo a shorter one set earlier.
    kafka.alter_topic_config("orders", {"retention.ms": "2000"})
    waited = _wait_for_retention(kafka, "orders")
    deleted_to = kafka.start_offsets(["orders"])["orders"]
    print(f"\nretention.ms=2000: log start {deleted_to} after {waited:.1f}s; stream read {read}")
    assert any(deleted_to[int(p)] > o for p, o in read.items())

    failed = runner.materialize(instance, [EVENTS], checks=[])
    assert not failed.success
    message = failed.failure_data_for_node("spark__orders_events").user_failure_data.description
    assert "retention deleted offsets of topic 'orders'" in message, message
    assert "continue_after_data_loss" in message
    assert "partition 0:" in message

    evaluation = _check(instance, dg.AssetCheckKey(ORDERS, "unread_not_deleted"))
    assert not evaluation.passed
    lost = evaluation.metadata["lost_ranges"].value
    print(f"stream failed: {message[:160]!r}; unread_not_deleted: {lost}")
    assert any(k.startswith("orders_events partition 0") for k in lost), lost
    assert lost == {
        f"orders_events partition {p}": f"{o}-{deleted_to[int(p)] - 1}"
        for p, o in read.items()
        if deleted_to[int(p)] > o
    }

    config = {"ops": {"spark__orders_events": {"config": {"continue_after_data_loss": True}}}}
    _ok(runner.materialize(instance, [EVENTS], checks=[], run_config=config))
    md = _metadata(instance, EVENTS)
    assert md["data_lost"] and all("-" in r for r in md["data_lost"].values())
    assert _check(instance, dg.AssetCheckKey(ORDERS, "unread_not_deleted")).passed
    # The tables load what was read; reconciliation accepts only the acknowledged loss.
    _ok(runner.materialize(instance, [TABLES[0], TABLES[2]], checks=[]))
    reconciled = _check(instance, dg.AssetCheckKey(TABLES[0], "orders_events_reconciled"))
    per = reconciled.metadata["partitions"].value
    assert reconciled.passed, per
    assert any(p.get("acknowledged_lost") for p in per.values()), per
