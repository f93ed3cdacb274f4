"""How long one evaluation of the offsets sensor takes over many partitions.

The project's own sensor (`build_offsets_sensor`) watches `topics` topics of `partitions`
partitions each on the real broker, against a real instance. Half the ticks find new offsets
(one message was produced to one topic) and return a run request; the others skip. After each
request, the requested stream reports the offsets as committed, as its run would.
"""

import statistics
import time

import dagster as dg

from kafka_assets.kafka import sensors
from kafka_assets.kafka.resources import KafkaResource
from kafka_assets.kafka.sensors import WatchedTopic, build_offsets_sensor


def measure_ticks(
    instance: dg.DagsterInstance,
    kafka: KafkaResource,
    topics: int = 10,
    partitions: int = 12,
    ticks: int = 60,
) -> dict[str, object]:
    names = [f"bench_tick_{i:02d}" for i in range(topics)]
    for name in names:
        kafka.ensure_topic(name, partitions, 1, {})
    producer = kafka.producer()
    for name in names:
        for p in range(partitions):
            producer.produce(name, b"{}", partition=p)
    producer.flush(30)
    watched = {
        name: WatchedTopic(
            key=dg.AssetKey(["kafka", name]),
            targets=[dg.AssetKey(["spark", f"{name}_events"])],
            streams=[dg.AssetKey(["spark", f"{name}_events"])],
        )
        for name in names
    }
    sensor = build_offsets_sensor(watched, name="bench_offsets_sensor")
    cursor = None
    times: dict[str, list[float]] = {"requested": [], "skipped": []}
    for i in range(ticks + 1):
        if i % 2:
            producer.produce(names[i % topics], b"{}")
            producer.flush(30)
        with dg.build_sensor_context(
            instance=instance, cursor=cursor, resources={"kafka": kafka}
        ) as context:
            began = time.perf_counter()
            result = sensor(context)
            took = time.perf_counter() - began
        if isinstance(result, dg.SensorResult):
            cursor = result.cursor
            _runs_finished(instance, watched, sensors.parse_cursor(cursor))
        if i == 0:
            continue  # the first tick sees every partition: not counted
        kind = "requested" if isinstance(result, dg.SensorResult) else "skipped"
        times[kind].append(took)
    every = times["requested"] + times["skipped"]
    return {
        "topics": topics,
        "partitions": topics * partitions,
        "ticks": len(every),
        "median_ms": round(statistics.median(every) * 1000, 1),
        "p95_ms": round(_p(every, 0.95) * 1000, 1),
        "median_requested_ms": round(statistics.median(times["requested"]) * 1000, 1),
        "median_skipped_ms": round(statistics.median(times["skipped"]) * 1000, 1),
    }


def _runs_finished(instance, watched, offsets) -> None:
    """What each requested run would record: its stream's committed end offsets."""
    for topic, parts in offsets.items():
        for stream in watched[topic].streams:
            instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    asset_key=stream,
                    metadata={
                        "end_offsets": dg.MetadataValue.json({str(p): o for p, o in parts.items()})
                    },
                )
            )


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]
