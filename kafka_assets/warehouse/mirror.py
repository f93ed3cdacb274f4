"""The SQL that applies change events to a mirror table, in source order per key.

A mirror row carries the position of the change it came from, `(_cdc_lsn, _cdc_offset)`: the
source's WAL position, then the Kafka offset (a replayed change has the same LSN and a later
offset). A change is applied only when it is newer than what the row holds, so a change replayed
after a connector restart never moves a row backwards. Hard deletes leave the key and position in
a small tombstone table beside the mirror, so a replayed insert of a deleted row stays deleted;
soft deletes keep the row with the declared column set true.
"""

from dataclasses import dataclass

from psycopg import sql

from kafka_assets.spec import CDC_COLUMNS

LSN, PARTITION, OFFSET, OP, TS_MS = CDC_COLUMNS
CDC_TYPES = {
    LSN: "bigint",
    PARTITION: "integer",
    OFFSET: "bigint",
    OP: "text",
    TS_MS: "bigint",
}


@dataclass(frozen=True)
class MirrorTable:
    """A warehouse table mirroring one source table; columns come from the change events."""

    name: str
    key: tuple[str, ...]
    columns: tuple[tuple[str, str], ...]
    """(name, PostgreSQL type) of the source row's columns, in the events' order."""
    delete_mode: str = "hard"
    delete_column: str | None = None

    @property
    def tombstones(self) -> str:
        return f"_{self.name}_deletes"

    @property
    def incoming_columns(self) -> list[str]:
        return [c for c, _ in self.columns] + list(CDC_COLUMNS)


def _ids(names) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def _position(alias: str) -> sql.Composed:
    return sql.SQL("({a}.{l}, {a}.{o})").format(
        a=sql.Identifier(alias), l=sql.Identifier(LSN), o=sql.Identifier(OFFSET)
    )


def _key_match(left: str, right: str, key) -> sql.Composed:
    return sql.SQL(" AND ").join(
        sql.SQL("{}.{} = {}.{}").format(
            sql.Identifier(left), sql.Identifier(k), sql.Identifier(right), sql.Identifier(k)
        )
        for k in key
    )


def create_mirror_sql(m: MirrorTable, table: sql.Composable) -> sql.Composed:
    cols = [sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in m.columns]
    if m.delete_column:
        cols.append(
            sql.SQL("{} boolean NOT NULL DEFAULT false").format(sql.Identifier(m.delete_column))
        )
    cols += [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in CDC_TYPES.items()]
    cols.append(sql.SQL("_loaded_at timestamptz NOT NULL DEFAULT now()"))
    cols.append(sql.SQL("PRIMARY KEY ({})").format(_ids(m.key)))
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(table, sql.SQL(", ").join(cols))


def create_tombstones_sql(m: MirrorTable, tombstones: sql.Composable) -> sql.Composed:
    types = dict(m.columns)
    cols = [sql.SQL("{} {}").format(sql.Identifier(k), sql.SQL(types[k])) for k in m.key]
    cols += [
        sql.SQL("{} {} NOT NULL").format(sql.Identifier(c), sql.SQL(CDC_TYPES[c]))
        for c in (LSN, PARTITION, OFFSET)
    ]
    cols.append(sql.SQL("PRIMARY KEY ({})").format(_ids(m.key)))
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
        tombstones, sql.SQL(", ").join(cols)
    )


def create_incoming_sql(m: MirrorTable, incoming: sql.Identifier) -> sql.Composed:
    cols = [sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in m.columns]
    cols += [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in CDC_TYPES.items()]
    return sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(
        incoming, sql.SQL(", ").join(cols)
    )


def add_column_sql(table: sql.Composable, name: str, pg_type: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
        table, sql.Identifier(name), sql.SQL(pg_type)
    )


def latest_sql(m: MirrorTable, incoming: sql.Identifier, latest: sql.Identifier) -> sql.Composed:
    """The newest change per key within the batch: source order is (LSN, Kafka offset)."""
    return sql.SQL(
        "CREATE TEMP TABLE {latest} ON COMMIT DROP AS SELECT DISTINCT ON ({key}) * FROM {inc}"
        " ORDER BY {key}, {lsn} DESC, {off} DESC"
    ).format(
        latest=latest,
        key=_ids(m.key),
        inc=incoming,
        lsn=sql.Identifier(LSN),
        off=sql.Identifier(OFFSET),
    )


def apply_sql(
    m: MirrorTable, table: sql.Composable, latest: sql.Identifier, tombstones: sql.Composable
) -> list[sql.Composed]:
    """The statements that apply a batch's newest change per key; run in this order."""
    data = [c for c, _ in m.columns]
    cdc = list(CDC_COLUMNS)
    newer = sql.SQL("{} < {}").format(_position("t"), _position("excluded"))
    is_delete = sql.SQL("l.{} = 'd'").format(sql.Identifier(OP))
    if m.delete_mode == "soft":
        flag = sql.Identifier(m.delete_column)
        # A delete keeps the stored values (its `before` image may hold only the key).
        keep = [
            sql.SQL("{0} = CASE WHEN excluded.{1} THEN t.{0} ELSE excluded.{0} END").format(
                sql.Identifier(c), flag
            )
            for c in data
            if c not in m.key
        ]
        sets = sql.SQL(", ").join(
            keep
            + [sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c)) for c in [*cdc]]
            + [sql.SQL("{0} = excluded.{0}").format(flag), sql.SQL("_loaded_at = now()")]
        )
        return [
            sql.SQL(
                "INSERT INTO {t} AS t ({cols}, {flag}) SELECT {lcols}, {is_delete} FROM {latest} l"
                " ON CONFLICT ({key}) DO UPDATE SET {sets} WHERE {newer}"
            ).format(
                t=table,
                cols=_ids(data + cdc),
                flag=flag,
                lcols=sql.SQL(", ").join(
                    sql.SQL("l.{}").format(sql.Identifier(c)) for c in data + cdc
                ),
                is_delete=is_delete,
                latest=latest,
                key=_ids(m.key),
                sets=sets,
                newer=newer,
            )
        ]
    sets = sql.SQL(", ").join(
        [
            sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c))
            for c in data + cdc
            if c not in m.key
        ]
        + [sql.SQL("_loaded_at = now()")]
    )
    l_cols = sql.SQL(", ").join(sql.SQL("l.{}").format(sql.Identifier(c)) for c in data + cdc)
    key_pos = [*m.key, LSN, PARTITION, OFFSET]
    return [
        # Deletes: the row goes if the delete is newer than it.
        sql.SQL(
            "DELETE FROM {t} AS t USING {latest} AS l WHERE {is_delete} AND {match}"
            " AND {row_pos} < {l_pos}"
        ).format(
            t=table,
            latest=latest,
            is_delete=is_delete,
            match=_key_match("t", "l", m.key),
            row_pos=_position("t"),
            l_pos=_position("l"),
        ),
        # ... and its key and position are remembered, newest delete per key.
        sql.SQL(
            "INSERT INTO {d} AS t ({cols}) SELECT {lcols} FROM {latest} AS l WHERE {is_delete}"
            " ON CONFLICT ({key}) DO UPDATE SET {sets} WHERE {newer}"
        ).format(
            d=tombstones,
            cols=_ids(key_pos),
            lcols=sql.SQL(", ").join(sql.SQL("l.{}").format(sql.Identifier(c)) for c in key_pos),
            latest=latest,
            is_delete=is_delete,
            key=_ids(m.key),
            sets=sql.SQL(", ").join(
                sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c))
                for c in (LSN, PARTITION, OFFSET)
            ),
            newer=newer,
        ),
        # Inserts and updates: only newer than the stored row, and than any delete of the key.
        sql.SQL(
            "INSERT INTO {t} AS t ({cols}) SELECT {lcols} FROM {latest} AS l WHERE NOT {is_delete}"
            " AND NOT EXISTS (SELECT 1 FROM {d} AS d WHERE {dmatch} AND {d_pos} >= {l_pos})"
            " ON CONFLICT ({key}) DO UPDATE SET {sets} WHERE {newer}"
        ).format(
            t=table,
            cols=_ids(data + cdc),
            lcols=l_cols,
            latest=latest,
            is_delete=is_delete,
            d=tombstones,
            dmatch=_key_match("d", "l", m.key),
            d_pos=_position("d"),
            l_pos=_position("l"),
            key=_ids(m.key),
            sets=sets,
            newer=newer,
        ),
    ]


def mirror_columns_sql() -> str:
    """(column, format_type) of a table's live columns: what an ALTER must add or reconcile."""
    return (
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
        " WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped"
        " ORDER BY a.attnum"
    )
