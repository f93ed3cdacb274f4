"""A plain-text summary of the warehouse, for the demo and for people at a terminal."""

from psycopg import sql

from kafka_assets.warehouse.resources import PostgresResource
from kafka_assets.warehouse.tables import (
    LEDGER,
    ORDERS,
    PAGE_VIEW_COUNTS,
    PAGE_VIEWS,
    QUARANTINE,
    REVENUE_PER_MINUTE,
)

TABLES = (ORDERS, PAGE_VIEWS, REVENUE_PER_MINUTE, PAGE_VIEW_COUNTS, QUARANTINE)


def table_counts(warehouse: PostgresResource) -> dict[str, int]:
    counts = {}
    with warehouse.connect() as conn:
        for spec in (*TABLES,):
            exists = conn.execute(
                "SELECT to_regclass(%s)", (f"{warehouse.schema_name}.{spec.name}",)
            ).fetchone()[0]
            counts[spec.name] = (
                conn.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(warehouse.table(spec.name))
                ).fetchone()[0]
                if exists
                else 0
            )
    return counts


def table_summary(warehouse: PostgresResource) -> str:
    lines = []
    counts = table_counts(warehouse)
    lines.append(
        "tables     " + ", ".join(f"{warehouse.schema_name}.{k}={v}" for k, v in counts.items())
    )
    with warehouse.connect() as conn:
        if counts.get(QUARANTINE.name):
            reasons = conn.execute(
                sql.SQL(
                    "SELECT topic, split_part(reason, ':', 1) AS why, count(*) FROM {} "
                    "GROUP BY 1, 2 ORDER BY 1, 3 DESC"
                ).format(warehouse.table(QUARANTINE.name))
            ).fetchall()
            lines.append("quarantine " + "; ".join(f"{t} {why}={n}" for t, why, n in reasons))
        landed = (
            conn.execute(
                sql.SQL(
                    "SELECT target_table, count(*), sum(rows_in) FROM {} GROUP BY 1 ORDER BY 1"
                ).format(warehouse.table(LEDGER))
            ).fetchall()
            if conn.execute(
                "SELECT to_regclass(%s)", (f"{warehouse.schema_name}.{LEDGER}",)
            ).fetchone()[0]
            else []
        )
        lines.append(
            "ledger     " + ", ".join(f"{t}: {b} batches/{r} rows in" for t, b, r in landed)
        )
    return "\n".join(lines)
