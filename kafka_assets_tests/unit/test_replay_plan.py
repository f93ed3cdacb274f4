"""Where a stream run starts: normal, replayed from offsets, or past offsets retention deleted."""

import json

import dagster as dg
import pytest

from kafka_assets.kafka.resources import KafkaResource, KafkaUnavailable
from kafka_assets.kafka.sensors import WatchedTopic, build_offsets_sensor
from kafka_assets.spark.replay import DataLost, StreamRunConfig, plan_start
from kafka_assets.spark.streams import lost_ranges
from kafka_assets_tests.conftest import free_port
from kafka_assets_tests.fakes import FakeKafka


@pytest.fixture
def kafka() -> FakeKafka:
    kafka = FakeKafka()
    kafka.create("orders", 3)
    for partition in range(3):
        kafka.append("orders", partition, 10)
    return kafka


def _plan(kafka, config=None, position=None, mode="append"):
    return plan_start(
        config or StreamRunConfig(),
        stream="orders_events",
        topic="orders",
        output_mode=mode,
        position=position,
        kafka=kafka,
    )


def test_a_normal_run_continues_its_checkpoint(kafka) -> None:
    plan = _plan(kafka, position={"0": 4, "1": 10, "2": 0})
    assert not plan.new_query and plan.fail_on_data_loss and plan.lost == {}


def test_replay_from_offsets_keeps_unnamed_partitions_where_they_are(kafka) -> None:
    config = StreamRunConfig(replay_from_offsets={"1": 3}, reason="bad deploy", requested_by="ana")
    plan = _plan(kafka, config, position={"0": 7, "1": 10, "2": 10})
    assert plan.new_query
    assert json.loads(plan.starting_offsets) == {"orders": {"0": 7, "1": 3, "2": 10}}
    assert plan.replay["reason"] == "bad deploy" and plan.replay["requested_by"] == "ana"


def test_replay_never_starts_before_the_log_start_or_past_the_end(kafka) -> None:
    kafka.delete_records("orders", {0: 4})
    plan = _plan(kafka, StreamRunConfig(replay_from_offsets={"0": 0, "2": 99}), position={})
    assert json.loads(plan.starting_offsets)["orders"] == {"0": 4, "1": 0, "2": 10}


def test_an_aggregate_replay_rebuilds_from_the_log_start(kafka) -> None:
    plan = _plan(kafka, StreamRunConfig(replay_from_offsets={"0": 8}), mode="update")
    assert json.loads(plan.starting_offsets)["orders"] == {"0": 0, "1": 0, "2": 0}
    assert plan.replay["resolved_by"].startswith("log start")


def test_bad_replay_requests_are_named(kafka) -> None:
    with pytest.raises(dg.Failure, match="not both"):
        _plan(kafka, StreamRunConfig(replay_from_offsets={}, replay_from_timestamp="2026-01-01Z"))
    with pytest.raises(dg.Failure, match="no partitions \\[7\\]"):
        _plan(kafka, StreamRunConfig(replay_from_offsets={"7": 0}))
    with pytest.raises(dg.Failure, match="needs a time zone"):
        _plan(kafka, StreamRunConfig(replay_from_timestamp="2026-11-24T10:00:00"))


def test_deleted_unread_offsets_fail_by_range_unless_opted_in(kafka) -> None:
    kafka.delete_records("orders", {0: 6, 2: 9})
    position = {"0": 2, "1": 5, "2": 9}
    assert lost_ranges(position, {0: 6, 1: 0, 2: 9}) == {"0": (2, 5)}
    with pytest.raises(DataLost, match="partition 0: 2-5.*continue_after_data_loss"):
        _plan(kafka, position=position)
    plan = _plan(kafka, StreamRunConfig(continue_after_data_loss=True), position=position)
    assert plan.lost == {"0": (2, 5)} and not plan.fail_on_data_loss and not plan.new_query


def test_an_unreachable_cluster_is_a_skip_that_keeps_the_cursor() -> None:
    kafka = KafkaResource(bootstrap_servers=f"127.0.0.1:{free_port()}", request_timeout_s=2)
    with pytest.raises(KafkaUnavailable, match="127.0.0.1:.*did not answer"):
        kafka.end_offsets(["orders"])
    sensor = build_offsets_sensor(
        {
            "orders": WatchedTopic(
                key=dg.AssetKey(["kafka", "orders"]),
                targets=[dg.AssetKey(["spark", "orders_events"])],
            )
        }
    )
    cursor = json.dumps({"orders": {"0": 5}})
    context = dg.build_sensor_context(
        instance=dg.DagsterInstance.ephemeral(), cursor=cursor, resources={"kafka": kafka}
    )
    result = sensor(context)
    assert isinstance(result, dg.SkipReason)
    assert "unreachable" in result.skip_message and "127.0.0.1" in result.skip_message
    assert context.cursor == cursor


def test_a_stream_fails_naming_the_bootstrap_servers_it_cannot_reach(tmp_path) -> None:
    from kafka_assets.definitions import pipelines
    from kafka_assets.spark.assets import build_stream_asset
    from kafka_assets.spark.resources import SparkResource, StreamingSettings

    address = f"127.0.0.1:{free_port()}"
    orders = next(p for p in pipelines if p.topic.name == "orders")
    stream = build_stream_asset(
        orders.events.spec, orders.events.key, orders.topic_key, "shop", ["spark"]
    )
    result = dg.materialize(
        [stream],
        resources={
            "kafka": KafkaResource(bootstrap_servers=address, request_timeout_s=2),
            "streaming": StreamingSettings(
                checkpoint_base=str(tmp_path / "c"), staging_base=str(tmp_path / "s")
            ),
            "pyspark": SparkResource(),  # never started: fails before Spark
            "staging_io_manager": dg.mem_io_manager,
        },
        raise_on_error=False,
    )
    assert not result.success
    failure = result.failure_data_for_node("spark__orders_events")
    assert f"Kafka at {address} (PLAINTEXT) did not answer" in failure.user_failure_data.description
