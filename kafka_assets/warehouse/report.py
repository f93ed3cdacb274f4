"""A plain-text summary of the warehouse, for the demo and for people at a terminal."""

from collections.abc import Sequence

from psycopg import sql

from kafka_assets.warehouse.resources import PostgresResource
from kafka_assets.warehouse.tables import LEDGER


def _exists(conn, warehouse: PostgresResource, name: str) -> bool:
    # to_regclass parses its text as SQL: quote both parts, so any schema name works.
    qualified = warehouse.table(name).as_string(conn)
    return conn.execute("SELECT to_regclass(%s)", (qualified,)).fetchone()[0] is not None


def table_counts(warehouse: PostgresResource, tables: Sequence[str]) -> dict[str, int]:
    counts = {}
    with warehouse.connect() as conn:
        for name in tables:
            counts[name] = (
                conn.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(warehouse.table(name))
                ).fetchone()[0]
                if _exists(conn, warehouse, name)
                else 0
            )
    return counts


def table_summary(
    warehouse: PostgresResource, tables: Sequence[str], quarantines: Sequence[str]
) -> str:
    """A line per table (rows, batches and rows loaded), then the reasons in each quarantine."""
    counts = table_counts(warehouse, [*tables, *quarantines])
    with warehouse.connect() as conn:
        landed = (
            {
                t: (b, r)
                for t, b, r in conn.execute(
                    sql.SQL(
                        "SELECT target_table, count(*), sum(rows_in) FROM {} GROUP BY 1"
                    ).format(warehouse.table(LEDGER))
                ).fetchall()
            }
            if _exists(conn, warehouse, LEDGER)
            else {}
        )
        reasons = {}
        for name in quarantines:
            if counts.get(name):
                reasons[name] = conn.execute(
                    sql.SQL(
                        "SELECT topic, split_part(reason, ':', 1) AS why, count(*) FROM {} "
                        "GROUP BY 1, 2 ORDER BY 1, 3 DESC"
                    ).format(warehouse.table(name))
                ).fetchall()
    width = max(len(f"{warehouse.schema_name}.{t}") for t in counts)
    lines = [f"{'table':<{width}}  {'rows':>9}  {'batches':>7}  {'rows in':>9}"]
    for name, rows in counts.items():
        batches, rows_in = landed.get(name, (0, 0))
        lines.append(
            f"{warehouse.schema_name + '.' + name:<{width}}  {rows:>9}  {batches:>7}  {rows_in:>9}"
        )
    for name, found in reasons.items():
        by_topic: dict[str, list[str]] = {}
        for topic, why, n in found:
            by_topic.setdefault(topic, []).append(f"{why} {n}")
        for topic, parts in by_topic.items():
            lines.append(f"{name} of {topic}: " + ", ".join(parts))
    return "\n".join(lines)
