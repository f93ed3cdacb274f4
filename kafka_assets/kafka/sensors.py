"""The offsets sensor: new Kafka offsets in, run requests and topic observations out.

Each tick reads every partition's end offset in one ListOffsets call (never messages), compares
with the cursor `{topic: {partition: offset}}`, and advances the cursor only in the same result
that requests the run covering those offsets. Run keys are made from the offsets, so a repeated
evaluation never launches a second run for the same data.
"""

import hashlib
import json
from collections.abc import Mapping, Sequence

import dagster as dg

from kafka_assets.kafka.assets import offsets_version, topic_key
from kafka_assets.kafka.resources import KafkaResource, Offsets

DATA_VERSION_TAG = "dagster/data_version"


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


def build_offsets_sensor(
    targets: Mapping[str, Sequence[dg.AssetKey]],
    check_keys: Mapping[str, Sequence[dg.AssetCheckKey]] | None = None,
    name: str = "kafka_offsets_sensor",
    minimum_interval_seconds: int = 5,
) -> dg.SensorDefinition:
    """`targets` maps each topic to the assets a run must materialize when it has new offsets."""
    topics = sorted(targets)
    all_targets = sorted({k for keys in targets.values() for k in keys}, key=str)
    check_keys = check_keys or {}

    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        target=all_targets,
        description="Requests the streams and tables downstream of topics whose offsets moved.",
    )
    def _sensor(context: dg.SensorEvaluationContext, kafka: KafkaResource):
        seen = parse_cursor(context.cursor)
        ends = kafka.end_offsets(topics)
        fresh = new_messages(seen, ends)
        changed = [t for t in topics if fresh.get(t, 0) > 0]
        missing = [t for t in topics if not ends.get(t)]
        if not changed:
            shown = dump_cursor(ends)
            extra = f"; missing topics: {', '.join(missing)}" if missing else ""
            return dg.SkipReason(f"No new offsets. End offsets seen: {shown}{extra}")

        covered = {t: ends[t] for t in changed}
        run_key = "offsets-" + hashlib.sha256(dump_cursor(covered).encode()).hexdigest()[:24]
        selection = sorted({k for t in changed for k in targets[t]}, key=str)
        observations = [
            dg.AssetObservation(
                asset_key=topic_key(t),
                metadata={
                    "end_offsets": dg.MetadataValue.json({str(p): o for p, o in ends[t].items()}),
                    "new_messages": fresh[t],
                    "lag_at_tick": fresh[t],
                },
                tags={DATA_VERSION_TAG: offsets_version({t: ends[t]}).value},
            )
            for t in changed
        ]
        request = dg.RunRequest(
            run_key=run_key,
            asset_selection=selection,
            asset_check_keys=[c for t in changed for c in check_keys.get(t, ())] or None,
            tags={"kafka_assets/offsets": dump_cursor(covered)[:4000]},
        )
        # Keep partitions of unchanged topics at their old position: only what is requested moves.
        cursor = {**seen, **covered}
        return dg.SensorResult(
            run_requests=[request], asset_events=observations, cursor=dump_cursor(cursor)
        )

    return _sensor
