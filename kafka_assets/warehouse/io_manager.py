"""Staged stream micro-batches into PostgreSQL: COPY into a temp table, one set-based upsert.

A warehouse asset returns a `TableLoad`: the table it fills and the staged streams that feed it.
Each batch is loaded in its own transaction together with a ledger row `(table, query id, batch
id)`; a batch already in the ledger is skipped, so a retried or replayed batch never duplicates a
row and a failed run loses nothing. The table's name comes from the declared `Table`, never from
the asset key.
"""

import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import reduce

import dagster as dg
import psycopg
import pyarrow as pa
from psycopg import sql
from pyspark.sql import DataFrame

from kafka_assets.faults import fault_point, ledger_broken
from kafka_assets.spark.staging import (
    Ranges,
    StagedBatch,
    StagedStream,
    add_spans,
    newest_message_time,
    offset_spans,
)
from kafka_assets.warehouse import mirror
from kafka_assets.warehouse.read_ahead import (
    COPY_CHUNK_ROWS,
    CsvChunk,
    encode_csv,
    newest_per_key,
    read_ahead,
)
from kafka_assets.warehouse.resources import PostgresResource
from kafka_assets.warehouse.tables import LEDGER, Table

PREVIEW_ROWS = 5


@dataclass(frozen=True)
class TableLoad:
    """A warehouse asset's output: the staged streams whose batches belong in `table`."""

    table: Table
    sources: tuple[StagedStream, ...]


@dataclass(frozen=True)
class MirrorLoad:
    """A mirror table's output: the staged change events that belong in `name`.

    `rows` turns a staged batch into (rows, key columns, [(column, PostgreSQL type)]): the
    columns come from the events, so a column added in the source arrives with its batch.
    """

    name: str
    source: StagedStream
    rows: Callable[[DataFrame], tuple[DataFrame, list[str], list[tuple[str, str]]]]
    delete_mode: str = "hard"
    delete_column: str | None = None


class MirrorSchemaError(RuntimeError):
    """A change event's column does not fit the mirror table; the message names both."""


@dataclass
class LoadStats:
    batches_loaded: int = 0
    batches_skipped: int = 0
    rows_in: int = 0
    rows_written: int = 0
    seconds: float = 0.0
    newest_message: datetime | None = None
    """The newest Kafka timestamp among the batches this load committed."""
    loaded_at: datetime | None = None
    columns_added: list[str] = field(default_factory=list)
    staged_deleted: int = 0
    """Staged batches deleted after this load because every reader had them."""

    def loaded(self, batch: StagedBatch, rows_in: int, rows_written: int) -> None:
        self.batches_loaded += 1
        self.rows_in += rows_in
        self.rows_written += rows_written
        newest = newest_message_time(batch)
        if newest and (self.newest_message is None or newest > self.newest_message):
            self.newest_message = newest


def _ident_list(names: list[str] | tuple[str, ...]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def create_table_sql(spec: Table, table: sql.Composable) -> sql.Composed:
    cols = [
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.pg_type)) for c in spec.columns
    ]
    cols.append(sql.SQL("_loaded_at timestamptz NOT NULL DEFAULT now()"))
    if spec.primary_key:
        cols.append(sql.SQL("PRIMARY KEY ({})").format(_ident_list(spec.primary_key)))
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(table, sql.SQL(", ").join(cols))


def incoming_sql(incoming: sql.Identifier, target: sql.Composable) -> sql.Composed:
    """The temp table a batch is copied into, shaped like its target, gone at commit."""
    return sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(
        incoming, target
    )


def upsert_sql(spec: Table, table: sql.Composable, incoming: sql.Identifier) -> sql.Composed:
    """INSERT .. ON CONFLICT from the temp table, one row per key (the newest) per batch."""
    names = spec.column_names
    order = list(spec.primary_key) + list(spec.newer_than)
    order_sql = sql.SQL(", ").join(
        [sql.Identifier(c) for c in spec.primary_key]
        + [sql.SQL("{} DESC").format(sql.Identifier(c)) for c in spec.newer_than]
    )
    non_key = [n for n in names if n not in spec.primary_key]
    updates = sql.SQL(", ").join(
        [sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in non_key]
        + [sql.SQL("_loaded_at = now()")]
    )
    query = sql.SQL(
        "INSERT INTO {table} AS t ({cols}) SELECT DISTINCT ON ({pk}) {cols} FROM {incoming} "
        "ORDER BY {order} ON CONFLICT ({pk}) DO UPDATE SET {updates}"
    ).format(
        table=table,
        cols=_ident_list(names),
        pk=_ident_list(spec.primary_key),
        incoming=incoming,
        order=order_sql if order else _ident_list(spec.primary_key),
        updates=updates,
    )
    if spec.newer_than:
        query += sql.SQL(" WHERE ({}) <= ({})").format(
            sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in spec.newer_than),
            sql.SQL(", ").join(
                sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in spec.newer_than
            ),
        )
    return query


_COMBINE = {
    "count": "{t} + {e}",
    "sum": "COALESCE({t} + {e}, {t}, {e})",
    "min": "LEAST({t}, {e})",
    "max": "GREATEST({t}, {e})",
}
"""How a stored total and a batch's partial total of each measure make the new total."""


def fold_sql(spec: Table, table: sql.Composable, incoming: sql.Identifier) -> sql.Composed:
    """INSERT .. ON CONFLICT that combines a batch's partial totals (one row per key) with the
    stored ones."""
    combine = dict(spec.fold)
    updates = []
    for name in spec.column_names:
        if name in spec.primary_key:
            continue
        column = sql.Identifier(name)
        if name in combine:
            stored, batch = sql.SQL("t.{}").format(column), sql.SQL("EXCLUDED.{}").format(column)
            rule = sql.SQL(_COMBINE[combine[name]]).format(t=stored, e=batch)
        else:
            rule = sql.SQL("EXCLUDED.{}").format(column)
        updates.append(sql.SQL("{} = {}").format(column, rule))
    updates.append(sql.SQL("_loaded_at = now()"))
    return sql.SQL(
        "INSERT INTO {table} AS t ({cols}) SELECT {cols} FROM {incoming} "
        "ON CONFLICT ({pk}) DO UPDATE SET {updates}"
    ).format(
        table=table,
        cols=_ident_list(spec.column_names),
        incoming=incoming,
        pk=_ident_list(spec.primary_key),
        updates=sql.SQL(", ").join(updates),
    )


def copy_chunks(rows: pa.Table, spec: Table) -> Iterator[CsvChunk]:
    """A piece of a staged batch as CSV for COPY, with the Kafka positions of every row read
    for the ledger; a latest table's piece keeps only the newest row of each key."""
    spans = offset_spans(rows, *spec.offset_columns) if spec.offset_columns else {}
    read = rows.num_rows
    if spec.newer_than:
        rows = newest_per_key(rows, spec.primary_key, spec.newer_than)
    for i, chunk in enumerate(encode_csv(rows)):
        yield chunk if i else replace(chunk, read=read, spans=spans)


def _noting(chunks: Iterable[CsvChunk], into: list[CsvChunk]) -> Iterator[CsvChunk]:
    """The chunks, each kept in `into` (without its data) as it goes by."""
    for chunk in chunks:
        into.append(replace(chunk, data=b""))
        yield chunk


def copy_csv(cursor, table: sql.Composable, columns: list[str], chunks: Iterable[CsvChunk]) -> int:
    """COPY encoded rows into `table`; returns rows sent."""
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(table, _ident_list(columns))
    sent = 0
    with cursor.copy(copy_sql) as copy:
        for chunk in chunks:
            copy.write(chunk.data)
            sent += chunk.rows
    return sent


def copy_arrow(cursor, table: sql.Composable, columns: list[str], data: pa.Table) -> int:
    """Stream an Arrow table into COPY as CSV, in bounded chunks; returns rows sent."""
    return copy_csv(cursor, table, columns, encode_csv(data))


def ensure_ledger(conn, warehouse: PostgresResource) -> None:
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            " target_table text NOT NULL, stream text NOT NULL, query_id text NOT NULL,"
            " batch_id bigint NOT NULL, rows_in bigint NOT NULL, rows_written bigint NOT NULL,"
            " offsets jsonb, run_id text, loaded_at timestamptz NOT NULL DEFAULT now(),"
            " PRIMARY KEY (target_table, query_id, batch_id))"
        ).format(warehouse.table(LEDGER))
    )


def loaded_batches(conn, warehouse: PostgresResource, table: str) -> set[tuple[str, int]]:
    rows = conn.execute(
        sql.SQL("SELECT query_id, batch_id FROM {} WHERE target_table = %s").format(
            warehouse.table(LEDGER)
        ),
        (table,),
    ).fetchall()
    return {(q, int(b)) for q, b in rows}


def batch_recorded(cur, warehouse: PostgresResource, table: str, batch: StagedBatch) -> bool:
    """Re-checked inside the batch's transaction, under the table's advisory lock."""
    cur.execute(
        sql.SQL(
            "SELECT 1 FROM {} WHERE target_table = %s AND query_id = %s AND batch_id = %s"
        ).format(warehouse.table(LEDGER)),
        (table, batch.query_id, batch.batch_id),
    )
    return cur.fetchone() is not None


def record_batch(
    cur,
    warehouse: PostgresResource,
    table: str,
    stream: str,
    batch: StagedBatch,
    rows: tuple[int, int],
    offsets: dict | None,
    run_id: str,
) -> None:
    """The ledger row of a loaded batch, written in the same transaction as its rows."""
    if ledger_broken():
        return  # the fault suite's control: its checks must catch this
    cur.execute(
        sql.SQL(
            "INSERT INTO {} (target_table, stream, query_id, batch_id, rows_in,"
            " rows_written, offsets, run_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        ).format(warehouse.table(LEDGER)),
        (
            table,
            stream,
            batch.query_id,
            batch.batch_id,
            rows[0],
            rows[1],
            json.dumps(offsets) if offsets is not None else None,
            run_id,
        ),
    )


def folded_ranges(cur, warehouse: PostgresResource, table: str) -> Ranges:
    """Per partition, the offset ranges of every batch folded into `table`, merged. A replayed
    stream stages those messages again under a new query, possibly before the batches it
    repeats are loaded; the fold leaves them out, so no total counts a message twice."""
    cur.execute(
        sql.SQL(
            "SELECT e.key, (e.value->>0)::bigint, (e.value->>1)::bigint"
            " FROM {} AS l, jsonb_each(l.offsets) AS e WHERE l.target_table = %s"
            " ORDER BY 1, 2"
        ).format(warehouse.table(LEDGER)),
        (table,),
    )
    merged: Ranges = {}
    for part, first, last in cur.fetchall():
        ranges = merged.setdefault(str(part), [])
        if ranges and first <= ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], last))
        else:
            ranges.append((first, last))
    return merged


def overlapping(batch: dict[str, list[int]], ranges: Ranges) -> tuple[Ranges, bool]:
    """The ranges that overlap a batch's [first, last, rows] per partition, and whether they
    cover all of it (nothing in the batch is new)."""
    found: Ranges = {}
    covered = True
    for part, (first, last, _) in batch.items():
        hits = [(a, b) for a, b in ranges.get(part, ()) if a <= last and b >= first]
        if hits:
            found[part] = hits
        covered = covered and any(a <= first and b >= last for a, b in hits)
    return found, covered


def batch_offsets(cur, incoming: sql.Composable, part: str, off: str) -> dict[str, list[int]]:
    """Per partition: [first offset, last offset, rows] of a batch in its temp table."""
    p, o = sql.Identifier(part), sql.Identifier(off)
    cur.execute(
        sql.SQL("SELECT {p}, min({o}), max({o}), count(*) FROM {i} GROUP BY {p}").format(
            p=p, o=o, i=incoming
        )
    )
    return {str(p): [lo, hi, n] for p, lo, hi, n in cur.fetchall()}


@dataclass(frozen=True)
class Loader:
    """Loads staged batches into the warehouse, each batch with its ledger row; no Dagster here,
    so the IO manager and a plain script (the benchmark's baseline) run the same code."""

    warehouse: PostgresResource
    run_id: str
    keep_staged: bool = False
    """Keep batches every reader has loaded (by default they are deleted, so disk stays bounded)."""

    # -- micro-batches ------------------------------------------------------------------------
    def table(self, load: TableLoad) -> LoadStats:
        spec, stats = load.table, LoadStats()
        target = self.warehouse.table(spec.name)
        began = time.monotonic()
        # Autocommit, so each `conn.transaction()` below is a real transaction, not a savepoint.
        with self.warehouse.connect(autocommit=True) as conn:
            conn.execute(create_table_sql(spec, target))
            ensure_ledger(conn, self.warehouse)
            done = loaded_batches(conn, self.warehouse, spec.name)
            for source in load.sources:
                pending = [b for b in source.batches if (b.query_id, b.batch_id) not in done]
                stats.batches_skipped += len(source.batches) - len(pending)
                with self._read_ahead(spec, source, pending) as ahead:
                    for batch, chunks in ahead:
                        if spec.fold:
                            rows_in, rows_written = self._fold_one(conn, spec, source, batch)
                        else:
                            rows_in, rows_written = self._load_one(
                                conn, spec, source, batch, chunks
                            )
                        fault_point("load.after_commit")
                        if rows_in < 0:
                            stats.batches_skipped += 1
                            continue
                        stats.loaded(batch, rows_in, rows_written)
                stats.staged_deleted += self.prune(conn, source)
        stats.seconds = time.monotonic() - began
        stats.loaded_at = datetime.now(UTC)
        return stats

    @staticmethod
    def _read_ahead(spec: Table, source: StagedStream, batches: list[StagedBatch]):
        """Each batch with its encoded rows, read on a thread while PostgreSQL merges the one
        before. None: the batch was deleted, every reader having loaded it. A fold reads its
        batch's few partial totals itself, once it knows which messages are new."""
        if spec.fold:
            return nullcontext((batch, None) for batch in batches)

        def chunks_of(batch: StagedBatch) -> Iterator[CsvChunk] | None:
            if not source.exists(batch):
                return None
            pieces = source.read_arrow(batch, spec.column_names, COPY_CHUNK_ROWS)
            return (chunk for piece in pieces for chunk in copy_chunks(piece, spec))

        return closing(read_ahead(batches, chunks_of))

    def _load_one(
        self,
        conn,
        spec: Table,
        source: StagedStream,
        batch: StagedBatch,
        data: Iterator[CsvChunk] | None,
    ):
        """One batch, one transaction: rows and ledger commit together or not at all."""
        if data is None:
            return -1, 0  # every reader loaded it and another run deleted it meanwhile
        target = self.warehouse.table(spec.name)
        incoming = sql.Identifier(f"_incoming_{spec.name}")
        with conn.transaction(), conn.cursor() as cur:
            if not self._claim(cur, spec.name, batch):
                return -1, 0
            cur.execute(incoming_sql(incoming, target))
            read: list[CsvChunk] = []
            copy_csv(cur, incoming, spec.column_names, _noting(data, read))
            fault_point("load.after_copy")
            rows_in = sum(c.rows if c.read is None else c.read for c in read)
            offsets = None
            if spec.offset_columns:
                offsets = reduce(add_spans, (c.spans for c in read), {})
            cur.execute(upsert_sql(spec, target, incoming))
            rows_written = max(cur.rowcount, 0)
            self._record(cur, spec.name, source.stream, batch, (rows_in, rows_written), offsets)
        return rows_in, rows_written

    def _fold_one(self, conn, spec: Table, source: StagedStream, batch: StagedBatch):
        """One batch's partial totals added to the table, with its ledger row, in one
        transaction; messages already folded (a replay's) are left out before the totals."""
        if not source.exists(batch):
            return -1, 0
        offsets = source.positions(batch)
        target = self.warehouse.table(spec.name)
        incoming = sql.Identifier(f"_incoming_{spec.name}")
        rows_in = rows_written = 0
        with conn.transaction(), conn.cursor() as cur:
            if not self._claim(cur, spec.name, batch):
                return -1, 0
            counted, nothing_new = overlapping(
                offsets, folded_ranges(cur, self.warehouse, spec.name)
            )
            if not nothing_new:
                data = source.read(batch, leave_out=counted).toArrow()
                cur.execute(incoming_sql(incoming, target))
                rows_in = copy_arrow(cur, incoming, spec.column_names, data)
                fault_point("load.after_copy")
                cur.execute(fold_sql(spec, target, incoming))
                rows_written = max(cur.rowcount, 0)
            self._record(cur, spec.name, source.stream, batch, (rows_in, rows_written), offsets)
        return rows_in, rows_written

    def _claim(self, cur, table: str, batch: StagedBatch) -> bool:
        """Take the table's advisory lock, which serialises its loaders, for this transaction;
        False when the batch is in the ledger already (another loader won the race)."""
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (table,))
        return not batch_recorded(cur, self.warehouse, table, batch)

    def _record(self, cur, table: str, stream: str, batch: StagedBatch, rows, offsets) -> None:
        record_batch(cur, self.warehouse, table, stream, batch, rows, offsets, self.run_id)

    def prune(self, conn, source: StagedStream) -> int:
        """Delete the staged batches of `source` that every table reading it has in the ledger.

        A stream whose readers are unknown (declared outside a pipeline) keeps its batches.
        """
        if self.keep_staged or not source.readers or not source.batches:
            return 0
        rows = conn.execute(
            sql.SQL(
                "SELECT query_id, batch_id FROM {} WHERE stream = %s AND target_table = ANY(%s)"
                " GROUP BY query_id, batch_id HAVING count(DISTINCT target_table) = %s"
            ).format(self.warehouse.table(LEDGER)),
            (source.stream, list(source.readers), len(source.readers)),
        ).fetchall()
        everywhere = {(q, int(b)) for q, b in rows}
        deleted = 0
        for batch in source.batches:
            if (batch.query_id, batch.batch_id) in everywhere and source.exists(batch):
                source.delete(batch)
                deleted += 1
        return deleted

    # -- change events into a mirror table -----------------------------------------------------
    def mirror(self, load: MirrorLoad) -> LoadStats:
        stats = LoadStats()
        began = time.monotonic()
        with self.warehouse.connect(autocommit=True) as conn:
            ensure_ledger(conn, self.warehouse)
            done = loaded_batches(conn, self.warehouse, load.name)
            for batch in load.source.batches:
                if (batch.query_id, batch.batch_id) in done or not load.source.exists(batch):
                    stats.batches_skipped += 1
                    continue
                rows, keys, columns = load.rows(load.source.read(batch))
                data = rows.toArrow()
                rows_in, rows_written = self._load_mirror_batch(
                    conn, load, batch, keys, columns, data, stats
                )
                if rows_in < 0:
                    stats.batches_skipped += 1
                    continue
                stats.loaded(batch, rows_in, rows_written)
            stats.staged_deleted += self.prune(conn, load.source)
        stats.seconds = time.monotonic() - began
        stats.loaded_at = datetime.now(UTC)
        return stats

    def _load_mirror_batch(
        self, conn, load: MirrorLoad, batch, keys, columns, data: pa.Table, stats
    ) -> tuple[int, int]:
        """One batch of changes, one transaction: new columns, the changes, the ledger row."""
        target = self.warehouse.table(load.name)
        if data.num_rows and not keys:
            raise MirrorSchemaError(
                f"{load.name}: the change events carry no key (a source table without a primary "
                "key?); a mirror needs one to apply updates and deletes"
            )
        table = mirror.MirrorTable(
            load.name, tuple(keys), tuple(columns), load.delete_mode, load.delete_column
        )
        incoming = sql.Identifier(f"_incoming_{load.name}")
        latest = sql.Identifier(f"_latest_{load.name}")
        written = 0
        offsets = None
        with conn.transaction(), conn.cursor() as cur:
            if not self._claim(cur, load.name, batch):
                return -1, 0
            if data.num_rows:
                cur.execute(mirror.create_mirror_sql(table, target))
                tombstones = self.warehouse.table(table.tombstones)
                if table.delete_mode == "hard":
                    cur.execute(mirror.create_tombstones_sql(table, tombstones))
                live = dict(
                    cur.execute(mirror.mirror_columns_sql(), (target.as_string(conn),)).fetchall()
                )
                for name, pg_type in columns:
                    have = live.get(name)
                    if have is None:
                        # A column added in the source: added here before its first values load.
                        cur.execute(mirror.add_column_sql(target, name, pg_type))
                        stats.columns_added.append(name)
                    elif have != pg_type:
                        raise MirrorSchemaError(
                            f"{self.warehouse.schema_name}.{load.name}: column {name!r} is "
                            f"{have} in the warehouse, but the source now sends {pg_type}; "
                            "alter the mirror column by hand (the batch stays staged)"
                        )
                cur.execute(mirror.create_incoming_sql(table, incoming))
                copy_arrow(cur, incoming, table.incoming_columns, data)
                offsets = batch_offsets(cur, incoming, mirror.PARTITION, mirror.OFFSET)
                cur.execute(mirror.latest_sql(table, incoming, latest))
                for statement in mirror.apply_sql(table, target, latest, tombstones):
                    cur.execute(statement)
                    written += max(cur.rowcount, 0)
            rows = (data.num_rows, written)
            self._record(cur, load.name, load.source.stream, batch, rows, offsets)
        return data.num_rows, written


class PostgresIOManager(dg.ConfigurableIOManager):
    """Loads staged batches into `<schema>.<declared table>`; see the module docstring."""

    warehouse: PostgresResource

    def handle_output(self, context: dg.OutputContext, obj: TableLoad | MirrorLoad) -> None:
        loader = Loader(self.warehouse, context.run_id)
        if isinstance(obj, MirrorLoad):
            stats = loader.mirror(obj)
            context.add_output_metadata(self._mirror_metadata(obj, stats))
            return
        if not isinstance(obj, TableLoad):
            raise TypeError(
                f"{context.asset_key.to_user_string()}: the warehouse IO manager stores a "
                f"TableLoad (staged stream batches for a declared table), not {type(obj).__name__}"
            )
        try:
            stats = loader.table(obj)
        except psycopg.OperationalError as exc:
            # Each batch commits with its ledger row or not at all, so what committed stays and
            # the rest is still pending: a rerun lands it once.
            where = self.warehouse.address()
            raise dg.Failure(
                description=(
                    f"{obj.table.name}: the warehouse at {where} failed during the load "
                    f"({str(exc).strip().splitlines()[0]}). Batches committed before the failure "
                    "are kept with their ledger rows; nothing partial was committed, and the "
                    "remaining batches load on the next run."
                )
            ) from exc
        fault_point("load.before_materialization")
        context.add_output_metadata(self._metadata(obj.table, stats))

    def load_input(self, context: dg.InputContext) -> None:
        raise NotImplementedError(
            f"{context.asset_key.to_user_string()} lives in PostgreSQL; read it with SQL "
            "(PostgresResource) rather than as an asset input"
        )

    def _mirror_metadata(self, load: MirrorLoad, stats: LoadStats) -> dict[str, object]:
        target = self.warehouse.table(load.name)
        with self.warehouse.connect() as conn:
            live = conn.execute(mirror.mirror_columns_sql(), (target.as_string(conn),)).fetchall()
            rows = (
                conn.execute(sql.SQL("SELECT count(*) FROM {}").format(target)).fetchone()[0]
                if live
                else 0
            )
        meta: dict[str, object] = {
            "dagster/row_count": rows,
            "dagster/table_name": f"{self.warehouse.schema_name}.{load.name}",
            "batches_loaded": stats.batches_loaded,
            "batches_skipped": stats.batches_skipped,
            "staged_batches_deleted": stats.staged_deleted,
            "changes_in": stats.rows_in,
            "rows_written": stats.rows_written,
            "load_seconds": round(stats.seconds, 3),
            "changes_per_s": round(stats.rows_in / stats.seconds, 1) if stats.seconds else 0.0,
            "columns_added": dg.MetadataValue.json(stats.columns_added),
        }
        if live:
            meta["dagster/column_schema"] = dg.TableSchema(
                columns=[dg.TableColumn(n, t) for n, t in live]
            )
        return meta

    # -- metadata --------------------------------------------------------------------------------
    def _metadata(self, spec: Table, stats: LoadStats) -> dict[str, object]:
        target = self.warehouse.table(spec.name)
        with self.warehouse.connect() as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(target))
            row_count = cur.fetchone()[0]
            cur.execute(
                sql.SQL("SELECT {} FROM {} ORDER BY _loaded_at DESC LIMIT %s").format(
                    _ident_list(spec.column_names), target
                ),
                (PREVIEW_ROWS,),
            )
            preview = cur.fetchall()
        header = "| " + " | ".join(spec.column_names) + " |\n"
        header += "|" + "---|" * len(spec.column_names) + "\n"
        body = "".join("| " + " | ".join(_cell(v) for v in row) + " |\n" for row in preview)
        return {
            "dagster/row_count": row_count,
            "dagster/column_schema": spec.column_schema(),
            "dagster/table_name": f"{self.warehouse.schema_name}.{spec.name}",
            "preview": dg.MetadataValue.md(header + body),
            "batches_loaded": stats.batches_loaded,
            "batches_skipped": stats.batches_skipped,
            "staged_batches_deleted": stats.staged_deleted,
            "rows_in": stats.rows_in,
            "rows_written": stats.rows_written,
            "load_seconds": round(stats.seconds, 3),
            "rows_per_s": round(stats.rows_in / stats.seconds, 1) if stats.seconds else 0.0,
            **(
                {
                    # Produce-to-queryable for the freshest row of this load, plotted per run.
                    "newest_message_to_load_s": round(
                        (stats.loaded_at - stats.newest_message).total_seconds(), 3
                    ),
                    "newest_message_time": stats.newest_message.isoformat(),
                }
                if stats.newest_message and stats.loaded_at
                else {}
            ),
        }


def _cell(value: object) -> str:
    text = value.hex() if isinstance(value, bytes | memoryview) else str(value)
    return text.replace("|", "\\|")[:60]
