"""The offsets sensor, evaluated on a sensor context with FakeKafka: requests and cursor."""

import json
import uuid

import dagster as dg
import pytest

from kafka_assets.kafka.sensors import (
    WatchedTopic,
    build_offsets_sensor,
    dump_cursor,
    new_messages,
    parse_cursor,
)
from kafka_assets_tests.fakes import FakeKafka


def key(path: str) -> dg.AssetKey:
    return dg.AssetKey(path.split("/"))


TARGETS = {
    "orders": [key("spark/orders_events"), key("warehouse/orders")],
    "page_views": [key("spark/page_views_events"), key("warehouse/page_views")],
}
CHECKS = {
    "orders": [dg.AssetCheckKey(key("warehouse/orders"), "orders_ok")],
    "page_views": [dg.AssetCheckKey(key("warehouse/page_views"), "page_views_ok")],
}
STREAMS = {"orders": [key("spark/orders_events")], "page_views": [key("spark/page_views_events")]}
SENSOR = build_offsets_sensor(
    {
        t: WatchedTopic(key(f"kafka/{t}"), TARGETS[t], CHECKS[t], STREAMS[t])
        for t in ("orders", "page_views")
    }
)


@pytest.fixture
def kafka() -> FakeKafka:
    fake = FakeKafka()
    fake.create("orders", 2)
    fake.create("page_views", 1)
    return fake


def launched(
    instance: dg.DagsterInstance,
    status: dg.DagsterRunStatus = dg.DagsterRunStatus.STARTED,
    tags: dict[str, str] | None = None,
) -> None:
    """A run the sensor launched, as the daemon records it."""
    instance.add_run(
        dg.DagsterRun(
            job_name="__ASSET_JOB",
            run_id=uuid.uuid4().hex,
            status=status,
            tags={"dagster/sensor_name": "kafka_offsets_sensor", **(tags or {})},
        )
    )


def tick(
    kafka: FakeKafka,
    cursor: str | None,
    sensor: dg.SensorDefinition = SENSOR,
    instance: dg.DagsterInstance | None = None,
    in_flight: bool = True,
):
    """One evaluation. With a cursor, the run its last request launched is still running unless
    `in_flight=False` (it failed): requested offsets then count as covered."""
    instance = instance or dg.DagsterInstance.ephemeral()
    if cursor and in_flight:
        launched(instance)
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"kafka": kafka})
    return context, sensor(context)


def committed(instance: dg.DagsterInstance, stream: str, offsets: dict[str, int]) -> None:
    """Record a stream materialization with its end offsets, as a stream run would."""
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=key(stream), metadata={"end_offsets": offsets})
    )


def cursor_of(offsets: dict) -> str:
    return dump_cursor(offsets)


# -- cursor helpers ------------------------------------------------------------------------------


def test_cursor_round_trip() -> None:
    offsets = {"page_views": {0: 7}, "orders": {1: 3, 0: 12}}
    text = dump_cursor(offsets)
    assert text == '{"orders":{"0":12,"1":3},"page_views":{"0":7}}'  # sorted, compact, stable
    assert parse_cursor(text) == offsets
    assert parse_cursor(None) == {} and parse_cursor("") == {}


def test_new_messages_per_topic() -> None:
    seen = {"orders": {0: 10, 1: 5}}
    ends = {"orders": {0: 12, 1: 5, 2: 4}, "page_views": {0: 3}}
    # p0: 2 new, p1: none, p2 unseen: from 0; page_views not in the cursor: from 0.
    assert new_messages(seen, ends) == {"orders": 6, "page_views": 3}
    # An end offset behind the cursor (a recreated topic) never counts negative.
    assert new_messages({"orders": {0: 10}}, {"orders": {0: 4}}) == {"orders": 0}
    assert new_messages(seen, {"orders": {}}) == {"orders": 0}


# -- (a) nothing new -----------------------------------------------------------------------------


def test_no_new_offsets_skips_and_names_the_offsets(kafka: FakeKafka) -> None:
    kafka.append("orders", 0, 4)
    cursor = cursor_of({"orders": {0: 4, 1: 0}, "page_views": {0: 0}})

    context, result = tick(kafka, cursor)

    assert isinstance(result, dg.SkipReason)
    assert result.skip_message == (
        'No new offsets. End offsets seen: {"orders":{"0":4,"1":0},"page_views":{"0":0}}'
    )
    assert context.cursor == cursor  # (c) a skip never moves the cursor


def test_empty_topics_with_no_cursor_skip(kafka: FakeKafka) -> None:
    context, result = tick(kafka, None)
    assert isinstance(result, dg.SkipReason)
    assert context.cursor is None


# -- (b) new offsets on one topic ----------------------------------------------------------------


def test_new_offsets_on_one_topic_request_its_downstream_only(kafka: FakeKafka) -> None:
    kafka.append("page_views", 0, 5)
    kafka.append("orders", 0, 4)
    kafka.append("orders", 1, 2)
    cursor = cursor_of({"orders": {0: 1, 1: 2}, "page_views": {0: 5}})

    _, result = tick(kafka, cursor)

    assert isinstance(result, dg.SensorResult)
    (request,) = result.run_requests
    assert request.asset_selection == TARGETS["orders"]
    assert request.asset_check_keys == CHECKS["orders"]
    assert request.run_key.startswith("offsets-")
    assert request.tags["kafka_assets/offsets"] == '{"orders":{"0":4,"1":2}}'

    (observation,) = result.asset_events
    assert isinstance(observation, dg.AssetObservation)
    assert observation.asset_key == key("kafka/orders")
    assert observation.metadata["new_messages"].value == 3
    assert observation.metadata["messages_total"].value == 6
    assert observation.metadata["end_offsets"].value == {"0": 4, "1": 2}

    # The changed topic moves to its end offsets; the other keeps its previous position.
    assert json.loads(result.cursor) == {"orders": {"0": 4, "1": 2}, "page_views": {"0": 5}}


def test_unchanged_topic_keeps_its_cursor_even_if_its_end_moved_back(kafka: FakeKafka) -> None:
    kafka.append("orders", 0, 1)
    cursor = cursor_of({"orders": {0: 0, 1: 0}, "page_views": {0: 9}})  # page_views: end is 0

    _, result = tick(kafka, cursor)

    assert json.loads(result.cursor) == {"orders": {"0": 1, "1": 0}, "page_views": {"0": 9}}
    assert [e.asset_key for e in result.asset_events] == [key("kafka/orders")]


def test_run_key_is_a_function_of_the_offsets(kafka: FakeKafka) -> None:
    kafka.append("orders", 0, 4)
    _, first = tick(kafka, None)
    _, again = tick(kafka, None)
    _, from_elsewhere = tick(kafka, cursor_of({"orders": {0: 2}}))
    kafka.append("orders", 1, 1)
    _, moved = tick(kafka, None)

    key_of = lambda r: r.run_requests[0].run_key  # noqa: E731
    assert key_of(first) == key_of(again) == key_of(from_elsewhere)
    assert key_of(moved) != key_of(first)


def test_both_topics_changed_request_one_run_for_both(kafka: FakeKafka) -> None:
    kafka.append("orders", 1, 2)
    kafka.append("page_views", 0, 3)

    _, result = tick(kafka, None)

    (request,) = result.run_requests
    assert set(request.asset_selection) == {*TARGETS["orders"], *TARGETS["page_views"]}
    assert set(request.asset_check_keys) == {*CHECKS["orders"], *CHECKS["page_views"]}
    assert {e.asset_key for e in result.asset_events} == {
        key("kafka/orders"),
        key("kafka/page_views"),
    }
    assert json.loads(result.cursor) == {"orders": {"0": 0, "1": 2}, "page_views": {"0": 3}}


# -- (c) the cursor moves only with a request ----------------------------------------------------


def test_cursor_advances_only_with_a_request(kafka: FakeKafka) -> None:
    kafka.append("orders", 0, 3)
    _, first = tick(kafka, None)
    assert len(first.run_requests) == 1

    context, second = tick(kafka, first.cursor)
    assert isinstance(second, dg.SkipReason)
    assert context.cursor == first.cursor

    kafka.append("orders", 0, 1)
    _, third = tick(kafka, first.cursor)
    assert len(third.run_requests) == 1
    assert json.loads(third.cursor)["orders"] == {"0": 4, "1": 0}
    assert third.asset_events[0].metadata["new_messages"].value == 1


# -- (d) partitions the cursor has not seen ------------------------------------------------------


def test_new_partition_counts_from_zero(kafka: FakeKafka) -> None:
    kafka.append("orders", 0, 3)
    kafka.ensure_topic("orders", 3, 1, {})
    kafka.append("orders", 2, 2)
    cursor = cursor_of({"orders": {0: 3, 1: 0}, "page_views": {0: 0}})

    _, result = tick(kafka, cursor)

    (request,) = result.run_requests
    assert request.asset_selection == TARGETS["orders"]
    assert result.asset_events[0].metadata["new_messages"].value == 2
    assert json.loads(result.cursor)["orders"] == {"0": 3, "1": 0, "2": 2}


# -- (e) missing topics --------------------------------------------------------------------------


def test_missing_topic_is_named_in_the_skip_message() -> None:
    kafka = FakeKafka()
    kafka.create("orders", 1)

    _, result = tick(kafka, None)

    assert isinstance(result, dg.SkipReason)
    assert result.skip_message.endswith("; missing topics: page_views")


def test_missing_topic_does_not_hold_back_the_other() -> None:
    kafka = FakeKafka()
    kafka.create("orders", 1)
    kafka.append("orders", 0, 2)

    _, result = tick(kafka, None)

    (request,) = result.run_requests
    assert request.asset_selection == TARGETS["orders"]
    assert json.loads(result.cursor) == {"orders": {"0": 2}}


# -- (f) what the streams committed counts as covered -------------------------------------------


def test_offsets_a_stream_committed_outside_the_sensor_are_not_requested(kafka: FakeKafka) -> None:
    """A stream run by hand (or by the demo) advanced past the cursor: nothing to request."""
    instance = dg.DagsterInstance.ephemeral()
    kafka.append("orders", 0, 4)
    committed(instance, "spark/orders_events", {"0": 4, "1": 0})

    context, result = tick(kafka, None, instance=instance)

    assert isinstance(result, dg.SkipReason)
    assert context.cursor is None

    kafka.append("orders", 1, 2)
    _, moved = tick(kafka, None, instance=instance)
    assert moved.asset_events[0].metadata["new_messages"].value == 2  # only past the stream


def test_a_topic_is_covered_only_as_far_as_all_its_streams() -> None:
    kafka = FakeKafka()
    kafka.create("orders", 1)
    kafka.append("orders", 0, 5)
    instance = dg.DagsterInstance.ephemeral()
    both = build_offsets_sensor(
        {
            "orders": WatchedTopic(
                key("kafka/orders"),
                TARGETS["orders"],
                streams=[key("spark/orders_events"), key("spark/revenue_per_minute")],
            )
        }
    )
    committed(instance, "spark/orders_events", {"0": 5})

    _, result = tick(kafka, None, both, instance)

    assert result.asset_events[0].metadata["new_messages"].value == 5  # the aggregate lags


# -- the project's sensor ------------------------------------------------------------------------


def test_project_sensor_requests_lineage_and_checks_of_the_changed_topic(kafka: FakeKafka) -> None:
    from kafka_assets.definitions import defs

    kafka_offsets_sensor = defs.resolve_sensor_def("kafka_offsets_sensor")

    kafka.append("orders", 1, 5)

    _, result = tick(kafka, None, kafka_offsets_sensor)

    (request,) = result.run_requests
    assert set(request.asset_selection) == {
        key("kafka/orders"),
        key("spark/orders_events"),
        key("warehouse/orders"),
        key("warehouse/quarantine"),
        key("warehouse/revenue_per_minute"),
    }
    assert set(request.asset_check_keys) == {
        dg.AssetCheckKey(key("warehouse/orders"), "orders_events_reconciled"),
        dg.AssetCheckKey(key("warehouse/orders"), "orders_unique_keys"),
        dg.AssetCheckKey(key("kafka/orders"), "consumer_lag"),
        dg.AssetCheckKey(key("kafka/orders"), "partitions_as_declared"),
        dg.AssetCheckKey(key("kafka/orders"), "unread_not_deleted"),
    }
    assert [e.asset_key for e in result.asset_events] == [key("kafka/orders")]
    assert json.loads(result.cursor) == {"orders": {"0": 0, "1": 5}}


def test_project_sensor_for_page_views(kafka: FakeKafka) -> None:
    from kafka_assets.definitions import defs

    kafka_offsets_sensor = defs.resolve_sensor_def("kafka_offsets_sensor")

    kafka.append("page_views", 0, 1)
    cursor = cursor_of({"orders": {0: 0, 1: 0}})

    _, result = tick(kafka, cursor, kafka_offsets_sensor)

    (request,) = result.run_requests
    assert set(request.asset_selection) == {
        key("kafka/page_views"),
        key("spark/page_view_counts"),
        key("spark/page_views_events"),
        key("warehouse/page_view_counts"),
        key("warehouse/page_views"),
        key("warehouse/quarantine"),
    }
    assert set(request.asset_check_keys) == {
        dg.AssetCheckKey(key("warehouse/page_views"), "page_views_events_reconciled"),
        dg.AssetCheckKey(key("kafka/page_views"), "consumer_lag"),
        dg.AssetCheckKey(key("kafka/page_views"), "partitions_as_declared"),
        dg.AssetCheckKey(key("kafka/page_views"), "unread_not_deleted"),
    }
    assert json.loads(result.cursor) == {"orders": {"0": 0, "1": 0}, "page_views": {"0": 1}}

    context, skip = tick(kafka, result.cursor, kafka_offsets_sensor)
    assert isinstance(skip, dg.SkipReason)
    assert context.cursor == result.cursor


# -- a run that failed is requested again ------------------------------------------------------


def test_offsets_whose_run_failed_are_requested_again_under_a_new_key(kafka: FakeKafka) -> None:
    """The broker was down, the run failed: nothing processed them, nothing is running."""
    kafka.append("orders", 0, 3)
    _, first = tick(kafka, None)
    (request,) = first.run_requests
    instance = dg.DagsterInstance.ephemeral()
    launched(instance, dg.DagsterRunStatus.FAILURE, dict(request.tags))

    _, again = tick(kafka, first.cursor, instance=instance, in_flight=False)

    (retry,) = again.run_requests
    assert retry.run_key == f"{request.run_key}-retry1"
    assert retry.asset_selection == request.asset_selection


def test_offsets_whose_run_is_still_running_are_not_requested_again(kafka: FakeKafka) -> None:
    kafka.append("orders", 0, 3)
    _, first = tick(kafka, None)
    _, again = tick(kafka, first.cursor)  # the launched run is still in flight
    assert isinstance(again, dg.SkipReason)
