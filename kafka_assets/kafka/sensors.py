"""The offsets sensor: new Kafka offsets in, run requests and topic observations out.

Each tick reads every partition's end offset in one ListOffsets call (never messages) and compares
it with what is already covered: the cursor `{topic: {partition: offset}}` of offsets the sensor
has requested, and the offsets the topic's streams have committed according to the instance
(so a stream run launched by hand, or by the demo, is never requested again). The cursor advances
only in the same result that requests the run covering those offsets, and run keys are made from
the offsets, so a repeated evaluation never launches a second run for the same data.
"""

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import dagster as dg

from kafka_assets.kafka.resources import KafkaResource, KafkaUnavailable, Offsets
from kafka_assets.spark.assets import committed_offsets_many


@dataclass(frozen=True)
class WatchedTopic:
    """What the sensor does when one topic moves."""

    key: dg.AssetKey
    targets: Sequence[dg.AssetKey]
    """The assets a run must materialize: the topic's streams and everything downstream."""
    checks: Sequence[dg.AssetCheckKey] = ()
    streams: Sequence[dg.AssetKey] = ()
    """Streams reading the topic: what all of them committed counts as processed."""


def parse_cursor(cursor: str | None) -> Offsets:
    if not cursor:
        return {}
    raw = json.loads(cursor)
    return {t: {int(p): int(o) for p, o in parts.items()} for t, parts in raw.items()}


def dump_cursor(offsets: Offsets) -> str:
    return json.dumps(
        {t: {str(p): o for p, o in sorted(parts.items())} for t, parts in sorted(offsets.items())},
        separators=(",", ":"),
    )


def new_messages(seen: Offsets, ends: Offsets) -> dict[str, int]:
    """Messages past the cursor, per topic (a partition the cursor has not seen counts from 0)."""
    out = {}
    for topic, parts in ends.items():
        before = seen.get(topic, {})
        out[topic] = sum(max(0, end - before.get(p, 0)) for p, end in parts.items())
    return out


def processed_offsets(instance: dg.DagsterInstance, topics: Mapping[str, WatchedTopic]) -> Offsets:
    """Per topic, the offsets every one of its streams has committed (one event-log query)."""
    keys = [k for w in topics.values() for k in w.streams]
    committed = committed_offsets_many(instance, keys) if keys else {}
    out: Offsets = {}
    for topic, watched in topics.items():
        if not watched.streams:
            continue
        positions = [committed.get(k, {}) for k in watched.streams]
        partitions = {p for pos in positions for p in pos}
        out[topic] = {int(p): min(pos.get(p, 0) for pos in positions) for p in partitions}
    return out


OFFSETS_TAG = "kafka_assets/offsets"
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def behind(requested: Offsets, processed: Offsets) -> bool:
    """Some requested offset is past what the streams processed."""
    return any(
        end > processed.get(topic, {}).get(p, 0)
        for topic, parts in requested.items()
        for p, end in parts.items()
    )


def runs_in_flight(instance: dg.DagsterInstance, sensor_name: str) -> bool:
    """Whether a run this sensor launched is queued or running (one indexed run query)."""
    filters = dg.RunsFilter(tags={"dagster/sensor_name": sensor_name}, statuses=IN_FLIGHT)
    return bool(instance.get_run_records(filters=filters, limit=1))


def covered(requested: Offsets, processed: Offsets) -> Offsets:
    """The further of requested and processed, per partition."""
    out: Offsets = {}
    for topic in set(requested) | set(processed):
        a, b = requested.get(topic, {}), processed.get(topic, {})
        out[topic] = {p: max(a.get(p, 0), b.get(p, 0)) for p in set(a) | set(b)}
    return out


def build_offsets_sensor(
    topics: Mapping[str, WatchedTopic],
    name: str = "kafka_offsets_sensor",
    minimum_interval_seconds: int = 1,
) -> dg.SensorDefinition:
    """The daemon's sensor loop comes round every 5 s at best; an interval of 5 s itself made it
    skip every other loop (ticks 9-10 s apart), so the interval sits below the loop. A tick is one
    ListOffsets call and one event-log query, tens of milliseconds."""
    names = sorted(topics)
    all_targets = sorted({k for w in topics.values() for k in w.targets}, key=str)

    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        target=all_targets,
        description="Requests the streams and tables downstream of topics whose offsets moved.",
    )
    def _sensor(context: dg.SensorEvaluationContext, kafka: KafkaResource):
        requested = parse_cursor(context.cursor)
        try:
            ends = kafka.end_offsets(names)
        except KafkaUnavailable as exc:
            # The cursor stays where it is: nothing is lost, and the next tick tries again.
            return dg.SkipReason(f"Kafka cluster unreachable, no offsets read: {exc}")
        processed = processed_offsets(context.instance, topics)
        if behind(requested, processed) and not runs_in_flight(context.instance, name):
            # Requested offsets no run is working on and none processed: their run failed or
            # was canceled (say, the broker was down). Request them again.
            requested = {}
        seen = covered(requested, processed)
        fresh = new_messages(seen, ends)
        changed = [t for t in names if fresh.get(t, 0) > 0]
        missing = [t for t in names if not ends.get(t)]
        if not changed:
            extra = f"; missing topics: {', '.join(missing)}" if missing else ""
            return dg.SkipReason(f"No new offsets. End offsets seen: {dump_cursor(ends)}{extra}")

        request_offsets = {t: ends[t] for t in changed}
        run_key = (
            "offsets-" + hashlib.sha256(dump_cursor(request_offsets).encode()).hexdigest()[:24]
        )
        selection = sorted({k for t in changed for k in topics[t].targets}, key=str)
        observations = [
            dg.AssetObservation(
                asset_key=topics[t].key,
                metadata={
                    "end_offsets": dg.MetadataValue.json({str(p): o for p, o in ends[t].items()}),
                    "messages_total": sum(ends[t].values()),
                    "new_messages": fresh[t],
                },
            )
            for t in changed
        ]
        tag = dump_cursor(request_offsets)[:4000]
        earlier = context.instance.get_run_records(
            filters=dg.RunsFilter(tags={OFFSETS_TAG: tag}), limit=100
        )
        if earlier:
            run_key = f"{run_key}-retry{len(earlier)}"  # a run key is launched only once
        request = dg.RunRequest(
            run_key=run_key,
            asset_selection=selection,
            asset_check_keys=[c for t in changed for c in topics[t].checks] or None,
            tags={OFFSETS_TAG: tag},
        )
        # Keep partitions of unchanged topics at their old position: only what is requested moves.
        cursor = {**requested, **request_offsets}
        return dg.SensorResult(
            run_requests=[request], asset_events=observations, cursor=dump_cursor(cursor)
        )

    return _sensor
