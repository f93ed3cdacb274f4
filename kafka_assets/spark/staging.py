"""The IO manager between Spark streams and the warehouse: staged Parquet micro-batches.

A stream asset's output is the `StreamRun` it consumed; the data itself is already staged, one
directory per micro-batch. Loading the input hands the downstream asset *every* staged batch of
the stream; the warehouse IO manager skips those it has recorded. So a failed warehouse run loses
nothing: its batches are simply still pending on the next run.
"""

import json
import operator
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import reduce
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from kafka_assets.spark.assets import READERS_METADATA, STREAM_METADATA
from kafka_assets.spark.resources import SparkResource, StreamingSettings
from kafka_assets.spark.streams import StreamRun, is_connect, local_path

MESSAGE_TIME = "kafka_timestamp"
PARTITION, OFFSET = "partition", "offset"
"""A parsed message's Kafka position in the staged rows."""
ARROW_INPUTS = ("error", PARTITION, OFFSET)
"""What the Arrow twins of the warehouse's mappers read besides the columns they hand on (the
quarantine's `reason` is `error`; positions are renamed): a load decodes only those columns."""

_BATCH_DIR = re.compile(r"query=([0-9a-f-]+)/batch=(\d+)$")


@dataclass(frozen=True)
class StagedBatch:
    query_id: str
    batch_id: int
    path: str


ArrowTransform = Callable[[pa.Table], pa.Table]
Ranges = dict[str, list[tuple[int, int]]]
"""Inclusive offset ranges per partition: {"0": [(0, 99), (250, 300)]}."""


def _as_is(table: pa.Table) -> pa.Table:
    return table


@dataclass(frozen=True)
class StagedStream:
    """All staged micro-batches of one stream, oldest first, with a transform to apply to each."""

    stream: str
    spark: SparkSession
    batches: tuple[StagedBatch, ...]
    transform: Callable[[DataFrame], DataFrame] | None = None
    readers: tuple[str, ...] = ()
    """Every table that loads this stream's batches: a batch all of them have loaded is deleted."""
    arrow: ArrowTransform | None = _as_is
    """The same transform over Arrow, while every mapped transform has an `arrow` twin giving the
    same rows; None once one has not. A local batch then loads with no Spark job at all."""

    def map(self, transform: Callable[[DataFrame], DataFrame]) -> "StagedStream":
        previous = self.transform
        composed = transform if previous is None else (lambda df: transform(previous(df)))
        twin, before = getattr(transform, "arrow", None), self.arrow
        arrow = None if twin is None or before is None else (lambda t: twin(before(t)))
        return replace(self, transform=composed, arrow=arrow)

    def read(self, batch: StagedBatch, leave_out: Ranges | None = None) -> DataFrame:
        """The batch through the transform; without the messages in `leave_out`, inclusive
        offset ranges per partition."""
        df = self.spark.read.parquet(batch.path)
        if leave_out:
            inside = [
                (F.col(PARTITION) == int(p)) & F.col(OFFSET).between(first, last)
                for p, ranges in leave_out.items()
                for first, last in ranges
            ]
            df = df.where(~reduce(operator.or_, inside))
        return self.transform(df) if self.transform else df

    def positions(self, batch: StagedBatch) -> "Spans":
        """Per partition, [first offset, last offset, messages] of the whole batch, valid or not,
        whatever the transform keeps."""
        raw = replace(self, transform=None, arrow=_as_is)
        found: Spans = {}
        for piece in raw.read_arrow(batch, [PARTITION, OFFSET], 1 << 20):
            found = add_spans(found, offset_spans(piece, PARTITION, OFFSET))
        return found

    def read_arrow(self, batch: StagedBatch, columns: list[str], rows: int) -> Iterator[pa.Table]:
        """The batch's rows as Arrow, at most `rows` at a time: read by pyarrow, file by file,
        when the batch is local and the transform has an Arrow twin (no Spark job, no transfer
        from the JVM), collected from Spark otherwise."""
        local = local_path(batch.path)
        if local is None or self.arrow is None:
            data = self.read(batch).select(*columns).toArrow()
            for piece in data.to_batches(max_chunksize=rows):
                yield pa.Table.from_batches([piece])
            return
        needed = {*columns, *ARROW_INPUTS}
        for file in sorted(local.glob("*.parquet")):
            if file.name.startswith((".", "_")):
                continue
            parquet = pq.ParquetFile(file)
            wanted = [c for c in parquet.schema_arrow.names if c in needed]
            for piece in parquet.iter_batches(batch_size=rows, columns=wanted):
                table = _instants_in_utc(pa.Table.from_batches([piece]))
                yield self.arrow(table).select(columns)

    def exists(self, batch: StagedBatch) -> bool:
        local = _local_only(self.spark, batch.path)
        if local is not None:
            return local.exists()
        path, fs = _hadoop_path(self.spark, batch.path)
        return bool(fs.exists(path))

    def delete(self, batch: StagedBatch) -> None:
        """Remove a loaded batch; Spark rewrites it only if it replays that batch, which the
        ledger then skips."""
        local = _local_only(self.spark, batch.path)
        if local is not None:
            shutil.rmtree(local, ignore_errors=True)
            return
        path, fs = _hadoop_path(self.spark, batch.path)
        fs.delete(path, True)


Spans = dict[str, list[int]]
"""Per partition, [first offset, last offset, rows] of some messages."""


def offset_spans(rows: pa.Table, partition: str, offset: str) -> Spans:
    """The spans of the Kafka positions in `rows`, from its partition and offset columns."""
    if not rows.num_rows:
        return {}
    stats = rows.group_by(partition).aggregate(
        [(offset, "min"), (offset, "max"), (offset, "count")]
    )
    return {
        str(row[partition]): [row[f"{offset}_{f}"] for f in ("min", "max", "count")]
        for row in stats.to_pylist()
    }


def add_spans(a: Spans, b: Spans) -> Spans:
    """The spans of two sets of messages together."""
    out = {p: list(v) for p, v in a.items()}
    for part, (first, last, rows) in b.items():
        have = out.get(part)
        out[part] = (
            [min(have[0], first), max(have[1], last), have[2] + rows]
            if have
            else [first, last, rows]
        )
    return out


def _instants_in_utc(table: pa.Table) -> pa.Table:
    """Spark's INT96 timestamps (a session without TIMESTAMP_MICROS) read back naive, in ns;
    they are UTC instants, as Spark itself reads them."""
    for i, f in enumerate(table.schema):
        if pa.types.is_timestamp(f.type) and f.type.tz is None and f.type.unit == "ns":
            table = table.set_column(i, f.name, table[i].cast(pa.timestamp("us", tz="UTC")))
    return table


class RemoteStagingNeedsJvm(RuntimeError):
    """Spark Connect gives the client no JVM, so no Hadoop FileSystem for a remote staging URI."""


def _local_only(spark: SparkSession, uri: str) -> Path | None:
    """The local file to use instead of Hadoop's FileSystem, when the session has no JVM here.

    A Spark Connect session runs its JVM in the server; staging on a local path (the server on
    this machine) is then handled with plain file operations.
    """
    if not is_connect(spark):
        return None
    path = local_path(uri)
    if path is None:
        raise RemoteStagingNeedsJvm(
            f"staging at {uri} is reached through Hadoop's FileSystem, which needs a Spark "
            "session with a JVM in this process (local mode or a standalone cluster); with "
            "Spark Connect, stage on a local path"
        )
    return path


def _hadoop_path(spark: SparkSession, uri: str):
    """(Path, FileSystem) through Hadoop, so local paths and s3a:// or hdfs:// URIs all work."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path, path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())


def newest_message_time(batch: StagedBatch) -> datetime | None:
    """The newest Kafka timestamp in a staged batch, from its Parquet footers: no data is read.

    None for a remote batch or one without message timestamps (an aggregate's rows).
    """
    path = local_path(batch.path)
    if path is None:
        return None
    newest = None
    for file in path.glob("*.parquet"):
        meta = pq.ParquetFile(file).metadata
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        if MESSAGE_TIME not in names:
            return None
        column = names.index(MESSAGE_TIME)
        for group in range(meta.num_row_groups):
            stats = meta.row_group(group).column(column).statistics
            if stats is not None and stats.has_min_max:
                value = stats.max
                value = value if value.tzinfo else value.replace(tzinfo=UTC)
                newest = value if newest is None else max(newest, value)
    return newest


def list_batches(spark: SparkSession, staging_path: str) -> list[StagedBatch]:
    """List batch directories through Hadoop's FileSystem, so any Hadoop URI works."""
    local = _local_only(spark, staging_path)
    if local is not None:
        return _list_local_batches(local)
    jvm = spark.sparkContext._jvm
    root, fs = _hadoop_path(spark, staging_path)
    if not fs.exists(root):
        return []
    found: list[StagedBatch] = []
    for query_dir in fs.listStatus(root):
        if not query_dir.isDirectory() or not query_dir.getPath().getName().startswith("query="):
            continue
        for batch_dir in fs.listStatus(query_dir.getPath()):
            path = batch_dir.getPath().toString()
            match = _BATCH_DIR.search(path)
            success = jvm.org.apache.hadoop.fs.Path(batch_dir.getPath(), "_SUCCESS")
            if match and fs.exists(success):
                found.append(StagedBatch(match.group(1), int(match.group(2)), path))
    return sorted(found, key=lambda b: (b.query_id, b.batch_id))


def _list_local_batches(root: Path) -> list[StagedBatch]:
    """The same listing with plain file operations, paths written as Hadoop writes them."""
    found = []
    for success in root.glob("query=*/batch=*/_SUCCESS"):
        path = f"file:{success.parent}"
        match = _BATCH_DIR.search(path)
        if match:
            found.append(StagedBatch(match.group(1), int(match.group(2)), path))
    return sorted(found, key=lambda b: (b.query_id, b.batch_id))


class StagingIOManager(dg.ConfigurableIOManager):
    """Keeps a stream's run report beside its staged batches; loads them as a StagedStream."""

    settings: StreamingSettings
    pyspark: SparkResource

    def handle_output(self, context: dg.OutputContext, obj: StreamRun) -> None:
        report = json.dumps(obj.__dict__, default=str)
        target = f"{self.settings.staging_path(obj.stream)}/_runs/{obj.run_id}.json"
        spark = self.pyspark.spark_session
        local = _local_only(spark, target)
        if local is not None:
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(report)
            return
        path, fs = _hadoop_path(spark, target)
        out = fs.create(path, True)
        try:
            out.write(bytearray(report.encode()))
        finally:
            out.close()

    def load_input(self, context: dg.InputContext) -> StagedStream:
        # The stream's name (its staging directory) travels in the upstream asset's definition,
        # so two streams whose keys end alike never share staging.
        metadata = context.upstream_output.definition_metadata
        stream = metadata[STREAM_METADATA]
        readers = tuple(metadata.get(READERS_METADATA) or ())
        spark = self.pyspark.spark_session
        batches = list_batches(spark, self.settings.staging_path(stream))
        context.log.info(f"{len(batches)} staged batches of {stream}")
        return StagedStream(stream, spark, tuple(batches), readers=readers)
