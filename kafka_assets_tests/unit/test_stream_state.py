"""A stream's local state: one run per checkpoint at a time, its position, its newest message."""

import json
import threading
import time
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kafka_assets.spark.staging import StagedBatch, newest_message_time
from kafka_assets.spark.streams import (
    StreamError,
    checkpoint_lock,
    checkpoint_position,
    local_path,
    staged_batch_writer,
    stream_query_id,
)


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, line: str) -> None:
        self.lines.append(line)


def test_a_second_run_of_a_stream_waits_for_the_first(tmp_path) -> None:
    checkpoint = str(tmp_path / "checkpoints" / "orders_events")
    order: list[str] = []
    first_holds = threading.Event()
    log = Log()

    def first() -> None:
        with checkpoint_lock(checkpoint, "orders_events", 30):
            order.append("first in")
            first_holds.set()
            time.sleep(1.0)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    first_holds.wait(10)
    with checkpoint_lock(checkpoint, "orders_events", 30, log) as waited:
        order.append("second in")
    thread.join()

    assert order == ["first in", "first out", "second in"]
    assert waited >= 0.5
    assert log.lines and "orders_events: waiting for pid" in log.lines[0]


def test_a_checkpoint_held_too_long_fails_naming_the_stream(tmp_path) -> None:
    checkpoint = str(tmp_path / "orders_events")
    with checkpoint_lock(checkpoint, "orders_events", 30):
        with pytest.raises(StreamError, match="Stream 'orders_events'.*held by pid"):
            with checkpoint_lock(checkpoint, "orders_events", 0.6):
                pass
    with checkpoint_lock(checkpoint, "orders_events", 1) as waited:  # released
        assert waited < 0.5


def test_remote_checkpoints_are_not_locked_locally() -> None:
    assert local_path("s3a://bucket/checkpoints/x") is None
    assert str(local_path("file:/tmp/x")) == "/tmp/x"
    assert str(local_path("file:///tmp/x")) == "/tmp/x"
    with checkpoint_lock("s3a://bucket/checkpoints/x", "x", 1) as waited:
        assert waited == 0.0


def test_position_is_the_last_committed_batch(tmp_path) -> None:
    root = tmp_path / "cp"
    (root / "offsets").mkdir(parents=True)
    (root / "commits").mkdir()
    meta = '{"batchWatermarkMs":0,"batchTimestampMs":1}'
    (root / "offsets" / "0").write_text(f'v1\n{meta}\n{{"orders":{{"0":5,"1":7}}}}')
    (root / "offsets" / "1").write_text(f'v1\n{meta}\n{{"orders":{{"0":9,"1":7}}}}')
    assert checkpoint_position(str(root), "orders") is None  # nothing committed yet
    (root / "commits" / "0").write_text("v1\n{}")
    assert checkpoint_position(str(root), "orders") == {"0": 5, "1": 7}
    (root / "commits" / "1").write_text("v1\n{}")  # batch 1 planned and committed
    assert checkpoint_position(str(root), "orders") == {"0": 9, "1": 7}
    assert checkpoint_position(str(root), "page_views") is None
    assert checkpoint_position(str(tmp_path / "none"), "orders") is None


def test_newest_message_time_comes_from_parquet_footers(tmp_path) -> None:
    batch = tmp_path / "query=q/batch=000000000001"
    batch.mkdir(parents=True)
    times = [datetime(2026, 11, 25, 6, 0, s, tzinfo=UTC) for s in (3, 59, 7)]
    for i, chunk in enumerate((times[:2], times[2:])):
        table = pa.table({"kafka_timestamp": pa.array(chunk, pa.timestamp("us", tz="UTC"))})
        pq.write_table(table, batch / f"part-{i}.parquet")
    assert newest_message_time(StagedBatch("q", 1, f"file:{batch}")) == times[1]

    aggregate = tmp_path / "query=q/batch=000000000002"
    aggregate.mkdir()
    pq.write_table(pa.table({"n": [1]}), aggregate / "part-0.parquet")
    assert newest_message_time(StagedBatch("q", 2, str(aggregate))) is None
    assert newest_message_time(StagedBatch("q", 3, "s3a://b/x")) is None


def test_a_new_checkpoint_gets_its_query_id_before_the_query_starts(tmp_path) -> None:
    """Spark adopts the id found in `<checkpoint>/metadata`; a new checkpoint is given one."""
    checkpoint = tmp_path / "checkpoints" / "orders_events"
    first = stream_query_id(None, str(checkpoint))
    assert json.loads((checkpoint / "metadata").read_text()) == {"id": first}
    assert stream_query_id(None, f"file:{checkpoint}") == first  # the same on every run
    (checkpoint / "metadata").unlink()
    assert stream_query_id(None, str(checkpoint)) != first  # a set-aside checkpoint: a new query


def test_a_checkpoint_behind_a_hadoop_uri_gets_its_query_id_through_the_jvm(
    spark, tmp_path
) -> None:
    """s3a:// or hdfs:// cannot be tested here; Hadoop's FileSystem is the same code for all."""
    from kafka_assets.spark.streams import _hadoop_query_id

    uri = f"file://{tmp_path}/checkpoints/orders_events/metadata"
    first = _hadoop_query_id(spark, uri)
    assert json.loads((tmp_path / "checkpoints/orders_events/metadata").read_text()) == {
        "id": first
    }
    assert _hadoop_query_id(spark, uri) == first


def test_the_batch_writer_pickles_with_nothing_but_its_path() -> None:
    """Spark Connect sends the writer to the server: it must carry no lock or shared state."""
    from pyspark import cloudpickle

    writer = staged_batch_writer("/staging/orders_events/query=abc")
    restored = cloudpickle.loads(cloudpickle.dumps(writer))
    cells = [c.cell_contents for c in restored.__closure__ or ()]
    assert cells == ["/staging/orders_events/query=abc"]
