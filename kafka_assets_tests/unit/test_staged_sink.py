"""The JVM sink stages micro-batches exactly as the Python writer does (Spark Connect uses it)."""

import json

import pyarrow.parquet as pq
import pytest
from pyspark.sql import types as T

from kafka_assets.spark.staging import _list_local_batches
from kafka_assets.spark.streams import STAGED_SINK, staged_batch_writer

SCHEMA = T.StructType([T.StructField("id", T.StringType()), T.StructField("n", T.LongType())])


def _stage(spark, source, target, checkpoint, jvm: bool) -> None:
    stream = spark.readStream.schema(SCHEMA).option("maxFilesPerTrigger", 1).json(str(source))
    writer = stream.writeStream.option("checkpointLocation", str(checkpoint))
    if jvm:
        writer = writer.format(STAGED_SINK).option("path", str(target))
    else:
        writer = writer.foreachBatch(staged_batch_writer(str(target)))
    writer.trigger(availableNow=True).start().awaitTermination()


@pytest.fixture
def source(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for f in range(3):
        lines = [json.dumps({"id": f"id-{f}-{i}", "n": i}) for i in range(50)]
        (folder / f"part-{f}.json").write_text("\n".join(lines))
    return folder


def _staged(target) -> dict[int, list[tuple]]:
    return {
        b.batch_id: sorted(
            tuple(r.values()) for r in pq.read_table(b.path[len("file:") :]).to_pylist()
        )
        for b in _list_local_batches(target)
    }


def test_the_jvm_sink_stages_what_the_python_writer_stages(spark, source, tmp_path) -> None:
    _stage(spark, source, tmp_path / "py" / "query=0a1b2c", tmp_path / "ck-py", jvm=False)
    _stage(spark, source, tmp_path / "jvm" / "query=0a1b2c", tmp_path / "ck-jvm", jvm=True)
    by_python, by_jvm = _staged(tmp_path / "py"), _staged(tmp_path / "jvm")
    assert sorted(by_jvm) == [0, 1, 2]  # one batch per file, each in batch=<n> with _SUCCESS
    assert by_jvm == by_python
    for file in (tmp_path / "jvm").rglob("*.parquet"):
        meta = pq.ParquetFile(file).metadata
        assert not any(
            meta.row_group(g).column(c).has_dictionary_page
            for g in range(meta.num_row_groups)
            for c in range(meta.num_columns)
        )


def test_a_replayed_batch_is_overwritten_not_added_to(spark, source, tmp_path) -> None:
    target, checkpoint = tmp_path / "jvm" / "query=0a1b2c", tmp_path / "ck"
    _stage(spark, source, target, checkpoint, jvm=True)
    # Spark replays a batch whose commit it never wrote: the same batch id, staged again.
    for name in ("2", ".2.crc"):
        (checkpoint / "commits" / name).unlink()
    _stage(spark, source, target, checkpoint, jvm=True)
    assert [len(rows) for rows in _staged(tmp_path / "jvm").values()] == [50, 50, 50]
