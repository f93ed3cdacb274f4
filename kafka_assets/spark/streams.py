"""Run one Structured Streaming query from Kafka to staged Parquet, with `availableNow`.

Each micro-batch is written to its own directory, `<staging>/<stream>/query=<id>/batch=<n>`,
overwritten when Spark replays that batch after a crash: the staging is exactly-once per batch
because the Kafka offsets live in the checkpoint and the batch directory is idempotent. The
warehouse loads staged batches later and records them, so a batch is never loaded twice.
"""

import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

from kafka_assets.faults import fault_point

Transform = Callable[[DataFrame], DataFrame]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamSpec:
    name: str
    topic: str
    transform: Transform
    output_mode: str
    description: str
    prepare: Callable[[Mapping[str, str]], Transform] | None = None
    """For a transform that must look at the topic before the query starts (CDC: the schema of
    the newest change events); called with the librdkafka client settings, its result replaces
    `transform` for that run."""
    max_offsets_per_trigger: int | None = None
    """A lower micro-batch bound than the streaming resource's, for a stream whose loads hold a
    whole batch in memory (CDC's mirrors)."""


@dataclass
class StreamRun:
    """What one materialization of a stream consumed, read from the query's progress reports."""

    stream: str
    topic: str
    writer: str
    """What staged the batches: the JVM sink, or the Python `foreachBatch`."""
    query_id: str
    run_id: str
    staging_path: str
    checkpoint_path: str
    batches: list[dict] = field(default_factory=list)
    start_offsets: dict[str, int] = field(default_factory=dict)
    end_offsets: dict[str, int] = field(default_factory=dict)
    input_rows: int = 0
    batches_staged: int = 0
    dropped_by_watermark: int = 0
    watermark: str | None = None
    duration_s: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return round(self.input_rows / self.duration_s, 1) if self.duration_s else 0.0


class StreamError(RuntimeError):
    """A streaming query failed; the message names the stream and topic."""


def local_path(uri: str) -> Path | None:
    """The local file behind a checkpoint or staging location, or None for a remote URI."""
    if uri.startswith("file:"):
        return Path("/" + uri[len("file:") :].lstrip("/"))
    return None if "://" in uri else Path(uri)


@contextmanager
def checkpoint_lock(
    checkpoint_path: str, stream: str, timeout_s: float, log=None
) -> Iterator[float]:
    """One query per checkpoint at a time, across processes; yields the seconds waited.

    Two runs of one stream (the demo beside the daemon's sensor run, or two launches) would both
    write batch N to Spark's offset log, and one would die with "Concurrent update to the log".
    The second run waits here for the first, then finds only what is still new. A remote
    checkpoint (s3a://, hdfs://) cannot be locked from here and is left to a single scheduler.
    """
    path = local_path(checkpoint_path)
    if path is None:
        yield 0.0
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_file = path.parent / f".{path.name}.lock"
    began = time.monotonic()
    with open(lock_file, "a+") as handle:
        warned = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                waited = time.monotonic() - began
                if waited > timeout_s:
                    raise StreamError(
                        f"Stream '{stream}': its checkpoint {checkpoint_path} has been held by "
                        f"{holder} for over {timeout_s:.0f}s; is a run of the same stream stuck?"
                    ) from None
                if not warned and log is not None:
                    log.info(f"{stream}: waiting for {holder}, which is running the same stream")
                    warned = True
                time.sleep(0.5)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield time.monotonic() - began
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def lost_ranges(
    position: dict[str, int] | None, log_start: dict[int, int]
) -> dict[str, tuple[int, int]]:
    """Offsets retention deleted before the stream read them: {partition: (first, last)}."""
    if not position:
        return {}
    return {
        p: (at, log_start[int(p)] - 1)
        for p, at in sorted(position.items())
        if int(p) in log_start and at < log_start[int(p)]
    }


def set_aside(checkpoint_path: str, why: str) -> str | None:
    """Move a local checkpoint out of the way so the next query starts anew; returns where."""
    path = local_path(checkpoint_path)
    if path is None:
        raise StreamError(f"cannot set aside the remote checkpoint {checkpoint_path} from here")
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = path.with_name(f"{path.name}.{why}-{stamp}-{os.getpid()}")
    path.rename(target)
    return str(target)


LOSS_DIR = "_lost"
"""Beside a stream's staged batches: one JSON file per run that went on past deleted offsets."""


def record_loss(staging_path: str, run_id: str, lost: dict[str, tuple[int, int]]) -> None:
    """Keep the ranges an opt-in run acknowledged as lost, for the reconciliation check."""
    root = local_path(staging_path)
    if root is None or not lost:
        return
    (root / LOSS_DIR).mkdir(parents=True, exist_ok=True)
    (root / LOSS_DIR / f"{run_id}.json").write_text(json.dumps(lost))


def acknowledged_loss(staging_path: str) -> dict[str, list[tuple[int, int]]]:
    """Every range recorded by `record_loss` for this stream: {partition: [(first, last)]}."""
    root = local_path(staging_path)
    found: dict[str, list[tuple[int, int]]] = {}
    if root is None or not (root / LOSS_DIR).is_dir():
        return found
    for file in sorted((root / LOSS_DIR).glob("*.json")):
        for part, (first, last) in json.loads(file.read_text()).items():
            found.setdefault(part, []).append((int(first), int(last)))
    return found


def checkpoint_position(checkpoint_path: str, topic: str) -> dict[str, int] | None:
    """Where the checkpoint's last committed batch ended: {partition: offset}.

    The checkpoint is the truth about a stream's position; the Dagster instance only learns it
    after the run. None when the checkpoint is remote or has no committed batch yet.
    """
    root = local_path(checkpoint_path)
    if root is None or not (root / "commits").is_dir():
        return None
    committed = sorted(int(f.name) for f in (root / "commits").iterdir() if f.name.isdigit())
    if not committed:
        return None
    offsets_file = root / "offsets" / str(committed[-1])
    if not offsets_file.exists():
        return None
    # Line 1 is the log version, line 2 the batch metadata, then one line per source.
    for line in offsets_file.read_text().splitlines()[2:]:
        found = _topic_offsets(line, topic) if line.strip().startswith("{") else {}
        if found:
            return found
    return None


def _topic_offsets(raw: str | dict | None, topic: str) -> dict[str, int]:
    if not raw:
        return {}
    data = json.loads(raw) if isinstance(raw, str) else raw
    return {str(p): int(o) for p, o in (data.get(topic) or {}).items()}


def is_connect(spark: SparkSession) -> bool:
    """A Spark Connect session: its JVM runs in the server, none in this process."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def stream_query_id(spark: SparkSession, checkpoint_path: str) -> str:
    """The id of the query a checkpoint belongs to, fixed before the query starts.

    Spark keeps it in `<checkpoint>/metadata` and reuses it on every restart; a new checkpoint is
    given one here, which Spark then adopts. Knowing it up front lets the micro-batch writer be a
    plain function of its arguments, with no state shared with this process: Spark Connect runs
    it in the server.
    """
    local = local_path(checkpoint_path)
    if local is not None:
        meta = local / "metadata"
        if not meta.exists():
            local.mkdir(parents=True, exist_ok=True)
            meta.write_text(_new_metadata())
        return str(json.loads(meta.read_text())["id"])
    if is_connect(spark):
        raise StreamError(
            f"the checkpoint {checkpoint_path} is remote: with Spark Connect, checkpoints must be "
            "on a path this machine and the server share"
        )
    return _hadoop_query_id(spark, f"{checkpoint_path.rstrip('/')}/metadata")


def _new_metadata() -> str:
    return json.dumps({"id": str(uuid.uuid4())}) + "\n"


def _hadoop_query_id(spark: SparkSession, uri: str) -> str:
    """The same through Hadoop's FileSystem, for a checkpoint at s3a://, hdfs://, ..."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(path):
        out = fs.create(path, False)
        try:
            out.write(bytearray(_new_metadata().encode()))
        finally:
            out.close()
    stream = fs.open(path)
    try:
        text = jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()
    return str(json.loads(text.splitlines()[0])["id"])


STAGED_PARQUET = {
    # Staged files are read once and deleted: dictionaries for unique values (ids, keys) cost a
    # third of the write and save nothing.
    "parquet.enable.dictionary": "false",
    # Row groups of at most 32 MiB: the warehouse reads a group at a time, so its memory does not
    # follow the micro-batch size. StagedParquetSink (jvm/udf) writes with the same settings.
    "parquet.block.size": str(32 << 20),
}


def staged_batch_writer(target: str) -> Callable[[DataFrame, int], None]:
    """The foreachBatch function: each micro-batch to `<target>/batch=<n>`, overwritten on replay.

    It closes over a string only, so it pickles for Spark Connect's server as well as running in
    this process.
    """

    def write_batch(batch: DataFrame, batch_id: int) -> None:
        fault_point("stream.before_stage")
        batch.write.mode("overwrite").options(**STAGED_PARQUET).parquet(
            f"{target}/batch={batch_id:012d}"
        )
        fault_point("stream.after_stage")

    return write_batch


STAGED_SINK = "io.kafkaassets.StagedParquetSink$Provider"
"""The project's JVM sink (jvm/udf): the same staging as `staged_batch_writer`, with no Python."""


def _start(
    spark: SparkSession, out: DataFrame, spec: StreamSpec, checkpoint: str, staged_under: str
):
    """Start the query; returns it and what stages its batches.

    Over Spark Connect a Python `foreachBatch` makes the server start a Python worker for every
    query, which costs more than a small batch itself, so the JVM sink stages instead when the
    server has the project's jar. In this process's own Spark the Python writer stays: it is
    where the fault suite's kill points are.
    """

    def start(writer):
        return (
            writer.outputMode(spec.output_mode)
            .option("checkpointLocation", checkpoint)
            .trigger(availableNow=True)
            .start()
        )

    python = out.writeStream.queryName(spec.name).foreachBatch(staged_batch_writer(staged_under))
    if not is_connect(spark):
        return start(python), "foreachBatch"
    try:
        jvm = out.writeStream.queryName(spec.name).format(STAGED_SINK)
        return start(jvm.option("path", staged_under)), "StagedParquetSink"
    except Exception as exc:  # noqa: BLE001 - a server without the jar: the Python writer
        if "StagedParquetSink" not in str(exc) and "DATA_SOURCE_NOT_FOUND" not in str(exc):
            raise
        log.warning(f"{spec.name}: staging through foreachBatch, the server lacks {STAGED_SINK}")
        return start(python), "foreachBatch"


def _progress(progress) -> dict:
    """A progress report as a dict; Spark Connect leaves the top-level row count out."""
    p = json.loads(progress.json) if hasattr(progress, "json") else dict(progress)
    if p.get("numInputRows") is None:
        p["numInputRows"] = sum(int(s.get("numInputRows") or 0) for s in p.get("sources") or [])
    return p


def run_available_now(
    spark: SparkSession,
    spec: StreamSpec,
    kafka_options: dict[str, str],
    checkpoint_path: str,
    staging_path: str,
    max_offsets_per_trigger: int,
    starting_offsets: str = "earliest",
    fail_on_data_loss: bool = True,
) -> StreamRun:
    """Process everything in the topic at query start, then stop; return what was consumed.

    `starting_offsets` applies only to a new checkpoint (a first run, or a replay); an existing
    checkpoint continues where it stopped.
    """
    raw = (
        spark.readStream.format("kafka")
        .options(**kafka_options)
        .option("subscribe", spec.topic)
        .option("startingOffsets", starting_offsets)
        .option("maxOffsetsPerTrigger", str(max_offsets_per_trigger))
        .option("failOnDataLoss", "true" if fail_on_data_loss else "false")
        .load()
    )
    out = spec.transform(raw)
    query_id = stream_query_id(spark, checkpoint_path)
    staged_under = f"{staging_path}/query={query_id}"

    started = time.monotonic()
    query, writer = _start(spark, out, spec, checkpoint_path, staged_under)
    try:
        query.awaitTermination()
    except Exception as exc:
        raise StreamError(
            f"Stream '{spec.name}' reading topic '{spec.topic}' failed: {exc}"
        ) from exc
    duration = time.monotonic() - started
    fault_point("stream.after_query")
    if str(query.id) != query_id:
        raise StreamError(
            f"Stream '{spec.name}': Spark ran query {query.id}, but its checkpoint "
            f"{checkpoint_path} names {query_id}; its batches were staged under the latter"
        )

    run = StreamRun(
        stream=spec.name,
        writer=writer,
        topic=spec.topic,
        query_id=query_id,
        run_id=str(query.runId),
        staging_path=staging_path,
        checkpoint_path=checkpoint_path,
        duration_s=duration,
    )
    for progress in query.recentProgress:
        p = _progress(progress)
        source = (p.get("sources") or [{}])[0]
        start = _topic_offsets(source.get("startOffset"), spec.topic)
        end = _topic_offsets(source.get("endOffset"), spec.topic)
        rows = int(p.get("numInputRows") or 0)
        dropped = sum(
            int(op.get("numRowsDroppedByWatermark") or 0) for op in p.get("stateOperators") or []
        )
        run.batches.append(
            {
                "batch_id": p.get("batchId"),
                "input_rows": rows,
                "start_offsets": start,
                "end_offsets": end,
                "duration_ms": (p.get("durationMs") or {}).get("triggerExecution"),
            }
        )
        run.input_rows += rows
        run.dropped_by_watermark += dropped
        watermark = (p.get("eventTime") or {}).get("watermark")
        if watermark and not watermark.startswith("1970-01-01T00:00:00"):
            run.watermark = watermark  # before any event, Spark reports the epoch: no watermark
        if start == end:
            continue  # a batch that read nothing (availableNow's last) covers no range
        for part, off in start.items():
            run.start_offsets[part] = min(off, run.start_offsets.get(part, off))
        for part, off in end.items():
            run.end_offsets[part] = max(off, run.end_offsets.get(part, off))
    run.batches_staged = _count_staged(staged_under, [b["batch_id"] for b in run.batches])
    # availableNow ends with a batch that finds nothing new; only batches that read count.
    run.batches = [b for b in run.batches if b["input_rows"]]
    return run


def _count_staged(staged_under: str, batch_ids: list) -> int:
    """How many of this run's micro-batches have a staged directory (all of them, remotely)."""
    root = local_path(staged_under)
    if root is None:
        return len(batch_ids)
    return sum(1 for b in batch_ids if (root / f"batch={int(b):012d}" / "_SUCCESS").exists())
