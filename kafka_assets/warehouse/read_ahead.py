"""Staged batches read and encoded for COPY on a thread, a bounded number of chunks ahead.

PostgreSQL merges one batch while the next is read from Parquet and encoded as CSV (pyarrow and
libpq release the GIL), so the database is never waiting on Python. Memory stays bounded by
`depth` chunks, whatever the size of a micro-batch.
"""

import io
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from kafka_assets.spark.staging import Spans, StagedBatch

COPY_CHUNK_ROWS = 50_000
_OPTIONS = pacsv.WriteOptions(include_header=False, quoting_style="needed")


@dataclass(frozen=True)
class CsvChunk:
    data: bytes
    rows: int
    read: int | None = None
    """Rows read from staging for this chunk, when more than it sends (the others were older
    states of the same keys); None: `rows`."""
    spans: Spans = field(default_factory=dict)
    """The Kafka positions of the rows read, for the ledger."""


def newest_per_key(rows: pa.Table, key: Sequence[str], newer_than: Sequence[str]) -> pa.Table:
    """The newest row of each key, in the order the merge's DISTINCT ON takes (key ascending,
    `newer_than` descending, nulls first), so PostgreSQL receives only rows it could keep; the
    merge still picks the newest among pieces. On the shop's orders, 40% of the rows."""
    if rows.num_rows < 2:
        return rows
    order = [(k, "ascending", "at_start") for k in key]
    order += [(c, "descending", "at_start") for c in newer_than]
    rows = rows.take(pc.sort_indices(rows, sort_keys=order))
    changed = None
    for k in key:
        column = rows[k]
        step = pc.not_equal(column.slice(1), column.slice(0, len(column) - 1))
        changed = step if changed is None else pc.or_(changed, step)
    first = pa.concat_arrays([pa.array([True]), pc.fill_null(changed, True).combine_chunks()])
    return rows.filter(first)


def encode_csv(table: pa.Table) -> Iterator[CsvChunk]:
    """An Arrow table as CSV for COPY, in chunks of at most COPY_CHUNK_ROWS rows."""
    for batch in table.to_batches(max_chunksize=COPY_CHUNK_ROWS):
        buf = io.BytesIO()
        pacsv.write_csv(pa.Table.from_batches([batch]), buf, _OPTIONS)
        yield CsvChunk(buf.getvalue(), batch.num_rows)


_END = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def read_ahead(
    batches: list[StagedBatch],
    chunks_of: Callable[[StagedBatch], Iterable[CsvChunk] | None],
    depth: int = 4,
) -> Iterator[tuple[StagedBatch, Iterator[CsvChunk] | None]]:
    """Each batch with an iterator over its encoded chunks (None: `chunks_of` found no batch).

    Each batch's iterator must be used up, or abandoned, before the next batch is asked for; an
    error on the reading thread is raised here, where the chunk was wanted.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                chunks = chunks_of(batch)
                if not put((batch, chunks is not None)):
                    return
                for chunk in chunks or ():
                    if not put(chunk):
                        return
                if chunks is not None and not put(_END):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put(_Failed(exc))

    def take():
        item = ready.get()
        if isinstance(item, _Failed):
            raise item.error
        return item

    def chunks() -> Iterator[CsvChunk]:
        while (item := take()) is not _END:
            yield item

    reader = threading.Thread(target=produce, name="load-read-ahead", daemon=True)
    reader.start()
    try:
        for batch in batches:
            announced, present = take()
            assert announced is batch, (announced, batch)
            if not present:
                yield batch, None
                continue
            current = chunks()
            yield batch, current
            for _ in current:  # what the consumer left (a batch another loader had)
                pass
    finally:
        stop.set()
        reader.join()
