"""PostgreSQL's own write rate for the same rows: COPY into a temp table, one set-based merge.

This is the physical limit the pipeline is held to: the same valid order rows the pipeline
loads, the same table definition, the same upsert statement, on the same server, with no Kafka
and no Spark in the way. The CSV is written before the clock starts.
"""

import csv
import json
import time
from pathlib import Path

import psycopg
from psycopg import sql

from kafka_assets.spec import POSITION_COLUMNS
from kafka_assets.warehouse.io_manager import create_table_sql, incoming_sql, upsert_sql
from kafka_assets.warehouse.resources import PostgresResource
from kafka_assets.warehouse.tables import Table

COPY_BLOCK = 1 << 20


class RowsCsv:
    """Valid documents as CSV lines in the table's column order, written while they are
    produced, so the generator runs once."""

    def __init__(self, table: Table, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.table, self.path, self.rows = table, path, 0
        self._handle = open(path, "w", newline="")
        self._out = csv.writer(self._handle)

    def add(self, doc: dict) -> None:
        position = {POSITION_COLUMNS[0]: 0, POSITION_COLUMNS[1]: self.rows}
        line = []
        for name in self.table.column_names:
            value = position[name] if name in position else doc.get(name)
            line.append(json.dumps(value) if isinstance(value, list | dict) else value)
        self._out.writerow(line)
        self.rows += 1

    def close(self) -> None:
        self._handle.close()


def checkpoint(warehouse: PostgresResource) -> bool:
    """Flush the server's dirty pages before a timed run, so no run pays for the checkpoint
    the run before it set off (COPY + merge took 16.3 s in one bench, 10.5 s in the one before,
    run last both times). False when the role may not (CHECKPOINT needs pg_checkpoint)."""
    try:
        with warehouse.connect(autocommit=True) as conn:
            conn.execute("CHECKPOINT")
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


def copy_and_merge(warehouse: PostgresResource, table: Table, path: Path) -> float:
    """Seconds for COPY of the whole file into a temp table plus the merge, in one transaction."""
    target = warehouse.table(table.name)
    incoming = sql.Identifier(f"_incoming_{table.name}")
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in table.column_names)
    with warehouse.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))
        conn.execute(create_table_sql(table, target))
        began = time.monotonic()
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(incoming_sql(incoming, target))
            copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(incoming, columns)
            with cur.copy(copy_sql) as copy, open(path, "rb") as data:
                while block := data.read(COPY_BLOCK):
                    copy.write(block)
            cur.execute(upsert_sql(table, target, incoming))
        return time.monotonic() - began
