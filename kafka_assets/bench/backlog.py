"""A large backlog through one Dagster run: memory, disk and the rate per micro-batch over time.

The messages are the generator's, rendered once and sent again and again (the generator, in
Python, would take longer than the run). While the run goes, a sampler reads the peak resident
memory of this Python process (the Dagster run and the Spark driver's Python side) and of the
Spark JVM, and the size of the staging directory.
"""

import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from kafka_assets.kafka.resources import KafkaResource

RENDERED = 100_000


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _du_mb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total / 1024 / 1024


def fill(kafka: KafkaResource, topic: str, generator, count: int) -> float:
    """Send `count` messages, cycling through RENDERED generated ones; returns seconds."""
    now = datetime.now(UTC).replace(microsecond=0)
    rendered = list(generator(min(count, RENDERED), seed=99, start_time=now))
    producer = kafka.producer()
    began = time.monotonic()
    for i in range(count):
        message = rendered[i % len(rendered)]
        while True:
            try:
                producer.produce(topic, message.value, message.key)
                break
            except BufferError:
                producer.poll(0.1)
        if i % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("the backlog's messages were not all acknowledged")
    return time.monotonic() - began


def flatness(batches: list[dict]) -> float | None:
    """Rows/s of the last third of the full batches over the first third's.

    Full batches only: the run's last batch holds whatever was left after the last full one
    (50 rows, say), and its rate is the per-batch fixed cost, not the pipeline slowing down.
    """
    largest = max((b["input_rows"] for b in batches), default=0)
    rates = [
        b["input_rows"] / (b["duration_ms"] / 1000)
        for b in batches
        if b.get("duration_ms") and b["input_rows"] >= largest / 2
    ]
    if not rates:
        return None
    third = max(1, len(rates) // 3)
    first, last = rates[:third], rates[-third:]
    return round((sum(last) / len(last)) / (sum(first) / len(first)), 3)


def measure_backlog(
    instance: dg.DagsterInstance,
    materialize,
    selection: list[dg.AssetKey],
    stream_key: dg.AssetKey,
    staging: Path,
    jvm_pid: int | None,
    messages: int,
) -> dict[str, object]:
    peaks = {"python_mb": 0.0, "jvm_mb": 0.0, "staging_mb": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peaks["python_mb"] = max(peaks["python_mb"], _rss_mb(os.getpid()))
            if jvm_pid:
                peaks["jvm_mb"] = max(peaks["jvm_mb"], _rss_mb(jvm_pid))
            peaks["staging_mb"] = max(peaks["staging_mb"], _du_mb(staging))
            done.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.monotonic()
    try:
        result = materialize(instance, selection, checks=[])
    finally:
        done.set()
        sampler.join()
    seconds = time.monotonic() - began
    if not result.success:
        raise RuntimeError("the backlog run failed; see the bench instance's event log")
    event = instance.get_latest_materialization_event(stream_key)
    batches = event.asset_materialization.metadata["batch_details"].value
    rates = [
        round(b["input_rows"] / (b["duration_ms"] / 1000))
        for b in batches
        if b.get("duration_ms") and b["input_rows"]
    ]
    return {
        "messages": messages,
        "seconds": round(seconds, 1),
        "rows_per_s": round(messages / seconds),
        "batches": len(batches),
        "batch_rows_per_s": rates,
        "last_third_to_first_third": flatness(batches),
        "peak_python_rss_mb": round(peaks["python_mb"]),
        "peak_jvm_rss_mb": round(peaks["jvm_mb"]),
        "peak_staging_mb": round(peaks["staging_mb"], 1),
        "staging_after_cleanup_mb": round(_du_mb(staging), 1),
    }
