"""The loader's read-ahead: batches in order, chunks complete, errors raised, memory bounded."""

import random
import threading
import time
from contextlib import closing

import pyarrow as pa
import pytest

from kafka_assets.spark.staging import StagedBatch
from kafka_assets.warehouse.io_manager import copy_chunks
from kafka_assets.warehouse.read_ahead import CsvChunk, encode_csv, newest_per_key, read_ahead
from kafka_assets.warehouse.tables import Column, Table

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


def test_newest_per_key_keeps_the_row_the_merge_would_keep() -> None:
    """Against a plain Python reading of the merge's ORDER BY key, event_time DESC, offset DESC
    (PostgreSQL puts nulls first when descending)."""
    rng = random.Random(5)
    rows = [
        {
            "k": f"o-{rng.randrange(40)}",
            "t": None if rng.random() < 0.1 else rng.randrange(20),
            "off": i,
            "v": rng.random(),
        }
        for i in range(600)
    ]
    rng.shuffle(rows)
    newest: dict[str, dict] = {}
    for row in rows:
        rank = (row["t"] is None, row["t"] or 0, row["off"])
        have = newest.get(row["k"])
        if have is None or rank > (have["t"] is None, have["t"] or 0, have["off"]):
            newest[row["k"]] = row

    kept = newest_per_key(pa.Table.from_pylist(rows), ["k"], ["t", "off"]).to_pylist()

    assert len(kept) == len(newest) == 40
    assert sorted(kept, key=lambda r: r["k"]) == sorted(newest.values(), key=lambda r: r["k"])


def test_a_latest_tables_chunk_sends_the_newest_rows_and_tells_what_it_read() -> None:
    table = Table(
        "t",
        tuple(
            Column(name, kind)
            for name, kind in [
                ("k", "text"),
                ("t", "integer"),
                ("source_partition", "integer"),
                ("source_offset", "bigint"),
            ]
        ),
        primary_key=("k",),
        newer_than=("t", "source_offset"),
        offset_columns=("source_partition", "source_offset"),
    )
    rows = pa.table(
        {
            "k": ["a", "b", "a", "a", "b"],
            "t": [1, 1, 3, 2, 0],
            "source_partition": [0, 0, 0, 1, 1],
            "source_offset": [10, 11, 12, 7, 8],
        }
    )

    (chunk,) = copy_chunks(rows, table)

    assert sorted(chunk.data.decode().splitlines()) == ['"a",3,0,12', '"b",1,0,11']
    assert (chunk.rows, chunk.read) == (2, 5)
    assert chunk.spans == {"0": [10, 12, 3], "1": [7, 8, 2]}
