"""The warehouse connection: one DSN and one schema, from the environment through dg.EnvVar."""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import psycopg
from psycopg import sql


class PostgresResource(dg.ConfigurableResource):
    dsn: str
    schema_name: str = "shop"
    connect_timeout_s: int = 10

    def address(self) -> str:
        """host:port/database of the DSN, for messages: never the user or password."""
        info = psycopg.conninfo.conninfo_to_dict(self.dsn)
        return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"

    @contextmanager
    def connect(self, autocommit: bool = False) -> Iterator[psycopg.Connection]:
        """A connection with the warehouse schema on the search path, always closed."""
        conn = psycopg.connect(
            self.dsn, autocommit=autocommit, connect_timeout=self.connect_timeout_s
        )
        try:
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema_name))
            )
            conn.execute(
                sql.SQL("SET search_path TO {}, public").format(sql.Identifier(self.schema_name))
            )
            if not autocommit:
                conn.commit()
            yield conn
        finally:
            conn.close()

    def table(self, name: str) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema_name), sql.Identifier(name))
