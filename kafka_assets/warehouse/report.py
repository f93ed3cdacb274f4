"""A plain-text summary of the warehouse, for the demo and for people at a terminal."""

from collections.abc import Sequence

from psycopg import sql

from kafka_assets.warehouse.resources import PostgresResource
from kafka_assets.warehouse.tables import LEDGER


def _exists(conn, warehouse: PostgresResource, name: str) -> bool:
    found = conn.execute("SELECT to_regclass(%s)", (f"{warehouse.schema_name}.{name}",))
    return found.fetchone()[0] is not None


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
    """Row counts of `tables`, reasons in each quarantine table, and the batch ledger."""
    counts = table_counts(warehouse, [*tables, *quarantines])
    lines = [
        "tables     " + ", ".join(f"{warehouse.schema_name}.{k}={v}" for k, v in counts.items())
    ]
    with warehouse.connect() as conn:
        for name in quarantines:
            if not counts.get(name):
                continue
            reasons = conn.execute(
                sql.SQL(
                    "SELECT topic, split_part(reason, ':', 1) AS why, count(*) FROM {} "
                    "GROUP BY 1, 2 ORDER BY 1, 3 DESC"
                ).format(warehouse.table(name))
            ).fetchall()
            lines.append(f"{name:<10} " + "; ".join(f"{t} {why}={n}" for t, why, n in reasons))
        landed = (
            conn.execute(
                sql.SQL(
                    "SELECT target_table, count(*), sum(rows_in) FROM {} GROUP BY 1 ORDER BY 1"
                ).format(warehouse.table(LEDGER))
            ).fetchall()
            if _exists(conn, warehouse, LEDGER)
            else []
        )
    lines.append("ledger     " + ", ".join(f"{t}: {b} batches/{r} rows in" for t, b, r in landed))
    return "\n".join(lines)
