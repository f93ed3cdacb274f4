"""The "legacy" PostgreSQL that change data capture reads, and the Debezium config that reads it.

Locally it is a second `LocalPostgres` cluster with logical decoding on, so the warehouse
cluster's settings and data stay as they are. The schema, the seed rows and the publication
come from docker/source-db-init.sql, which the compose stack's source-db runs as well.
"""

from collections.abc import Mapping

from kafka_assets.cdc import connect
from kafka_assets.cdc.connect import POSTGRES_CONNECTOR  # noqa: F401 - re-exported
from kafka_assets.local.postgres import LocalPostgres
from kafka_assets.paths import SOURCE_INIT_SQL

DATABASE = "legacy"
SCHEMA = "shop"
TABLES = ("customers", "products", "orders")
PUBLICATION = "kafka_assets_cdc"
# The role docker/source-db-init.sql grants to, and docker/source-db-role.sh creates.
CDC_USER = "cdc"

# pgoutput needs wal_level=logical; each connector holds one WAL sender and one slot.
SERVER_SETTINGS = {
    "wal_level": "logical",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "shared_buffers": "64MB",
}


def prepare(pg: LocalPostgres, *, password: str) -> None:
    """Create or re-password the replication role, then apply the shop schema and publication.

    Re-setting the password on every start lets SOURCE_CDC_PASSWORD change without a new cluster.
    """
    import psycopg
    from psycopg import sql

    conn = psycopg.connect(pg.dsn(DATABASE), autocommit=True, connect_timeout=10)
    try:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (CDC_USER,)).fetchone()
        conn.execute(
            sql.SQL("{} ROLE {} WITH LOGIN REPLICATION PASSWORD {}").format(
                sql.SQL("ALTER" if exists else "CREATE"),
                sql.Identifier(CDC_USER),
                sql.Literal(password),
            )
        )
        conn.execute(SOURCE_INIT_SQL.read_text())
    finally:
        conn.close()


def debezium_postgres_config(
    source_dsn: str,
    *,
    user: str,
    password: str,
    topic_prefix: str,
    slot_name: str,
    publication: str = PUBLICATION,
    tables: tuple[str, ...] = TABLES,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The legacy shop's connector config (see `kafka_assets.cdc.connect`), schema `shop`."""
    return connect.debezium_postgres_config(
        source_dsn,
        user=user,
        password=password,
        topic_prefix=topic_prefix,
        slot_name=slot_name,
        publication=publication,
        schema=SCHEMA,
        tables=tables,
        extra=extra,
    )
