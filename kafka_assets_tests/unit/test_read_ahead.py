"""The loader's read-ahead: batches in order, chunks complete, errors raised, memory bounded."""

import threading
import time
from contextlib import closing

import pyarrow as pa
import pytest

from kafka_assets.spark.staging import StagedBatch
from kafka_assets.warehouse.read_ahead import CsvChunk, encode_csv, read_ahead

BATCHES = [StagedBatch("q", i, f"file:/nowhere/batch={i}") for i in range(4)]


def _chunks(batch: StagedBatch, n: int = 3):
    return [CsvChunk(f"{batch.batch_id}-{i}\n".encode(), 1) for i in range(n)]


def test_every_batch_in_order_with_all_its_chunks_and_missing_ones_as_none() -> None:
    def chunks_of(batch):
        return None if batch.batch_id == 2 else iter(_chunks(batch))

    got = []
    with closing(read_ahead(BATCHES, chunks_of)) as ahead:
        for batch, chunks in ahead:
            got.append((batch.batch_id, None if chunks is None else [c.data for c in chunks]))
    assert got == [
        (0, [b"0-0\n", b"0-1\n", b"0-2\n"]),
        (1, [b"1-0\n", b"1-1\n", b"1-2\n"]),
        (2, None),
        (3, [b"3-0\n", b"3-1\n", b"3-2\n"]),
    ]


def test_chunks_left_unread_do_not_leak_into_the_next_batch() -> None:
    with closing(read_ahead(BATCHES, lambda b: iter(_chunks(b, 5)))) as ahead:
        seen = []
        for _batch, chunks in ahead:
            seen.append(next(chunks).data)  # a batch another loader had: abandoned after one
    assert seen == [b"0-0\n", b"1-0\n", b"2-0\n", b"3-0\n"]


def test_an_error_while_reading_is_raised_where_the_chunk_is_wanted() -> None:
    def chunks_of(batch):
        if batch.batch_id == 1:
            raise OSError("staged file unreadable")
        return iter(_chunks(batch))

    with closing(read_ahead(BATCHES, chunks_of)) as ahead:
        batch, chunks = next(ahead)
        assert len(list(chunks)) == 3
        with pytest.raises(OSError, match="staged file unreadable"):
            next(ahead)


def test_the_reader_stays_a_bounded_number_of_chunks_ahead_and_stops_when_abandoned() -> None:
    produced = []

    def chunks_of(batch):
        for chunk in _chunks(batch, 50):
            produced.append(chunk)
            yield chunk

    ahead = read_ahead(BATCHES, chunks_of, depth=4)
    _batch, chunks = next(ahead)
    next(chunks)
    time.sleep(0.5)
    assert len(produced) <= 1 + 4 + 1  # taken, queued, and one waiting to be queued
    ahead.close()
    assert not any(t.name == "load-read-ahead" for t in threading.enumerate())


def test_csv_chunks_split_a_table_and_count_its_rows() -> None:
    table = pa.table({"id": list(range(120_001)), "name": ["a,b"] * 120_001})
    chunks = list(encode_csv(table))
    assert [c.rows for c in chunks] == [50_000, 50_000, 20_001]
    assert chunks[0].data.startswith(b'0,"a,b"\n')
