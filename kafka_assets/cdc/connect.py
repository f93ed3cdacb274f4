"""Kafka Connect and the legacy source database, as resources, and the Debezium connector config.

The connector's database password never passes through here: the config names it as
`${env:SOURCE_CDC_PASSWORD}`, which the worker's EnvVarConfigProvider resolves from its own
environment, so it is neither in Dagster's metadata and logs nor in the config Connect stores.
"""

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import dagster as dg
import psycopg

POSTGRES_CONNECTOR = "io.debezium.connector.postgresql.PostgresConnector"
POSITION_MARKER = "kafka_assets"
"""Prefix of the logical decoding messages that mark a WAL position the slot must pass."""
PASSWORD_REFERENCE = "${env:SOURCE_CDC_PASSWORD}"
"""Resolved by the worker's `config.providers=env` (EnvVarConfigProvider)."""


def debezium_postgres_config(
    source_dsn: str,
    *,
    user: str,
    password: str,
    topic_prefix: str,
    slot_name: str,
    publication: str,
    schema: str,
    tables: tuple[str, ...],
    heartbeat_table: str | None = None,
    heartbeat_interval_ms: int = 1000,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A Debezium PostgreSQL connector reading `schema.tables` through an existing publication.

    Host, port and database come from SOURCE_DSN; the login is the replication role's. Topics
    are `<topic_prefix>.<schema>.<table>`, created by the worker (the broker does not
    auto-create topics). Decimals travel as exact strings with their declared precision and scale
    in the field schema's parameters, so the mirror gets `numeric(p,s)`.
    """
    url = urlsplit(source_dsn)
    if not url.hostname or not url.path.strip("/"):
        raise ValueError("SOURCE_DSN must name a host and a database")
    config = {
        "connector.class": POSTGRES_CONNECTOR,
        "tasks.max": "1",
        "plugin.name": "pgoutput",
        "database.hostname": url.hostname,
        "database.port": str(url.port or 5432),
        "database.dbname": unquote(url.path.strip("/")),
        "database.user": user,
        "database.password": password,
        "topic.prefix": topic_prefix,
        "slot.name": slot_name,
        "publication.name": publication,
        "publication.autocreate.mode": "disabled",
        "table.include.list": ",".join(f"{schema}.{table}" for table in tables),
        "snapshot.mode": "initial",
        # Exact decimals as strings: the default (bytes) is unreadable without the schema.
        "decimal.handling.mode": "string",
        "datatype.propagate.source.type": r".+\.NUMERIC,.+\.DECIMAL",
        "tombstones.on.delete": "true",
        # The position markers `SourceDatabaseResource.mark` writes are not change events.
        "message.prefix.exclude.list": POSITION_MARKER,
        "topic.creation.default.replication.factor": "1",
        "topic.creation.default.partitions": "1",
    }
    if heartbeat_table:
        # An idle capture set still moves the slot: the heartbeat's own change is in the
        # publication (not in table.include.list), and its LSN gets confirmed.
        config["heartbeat.interval.ms"] = str(heartbeat_interval_ms)
        config["heartbeat.action.query"] = (
            f"INSERT INTO {heartbeat_table} (id, beat_at) VALUES (1, now()) "
            "ON CONFLICT (id) DO UPDATE SET beat_at = EXCLUDED.beat_at"
        )
    config.update(extra or {})
    return config


@dataclass
class ConnectorStatus:
    name: str
    state: str
    worker_id: str
    tasks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def task_states(self) -> dict[str, str]:
        return {str(t.get("id")): t.get("state", "") for t in self.tasks}

    @property
    def running(self) -> bool:
        return (
            self.state == "RUNNING"
            and bool(self.tasks)
            and all(t.get("state") == "RUNNING" for t in self.tasks)
        )

    @property
    def failed_trace(self) -> str | None:
        for t in self.tasks:
            if t.get("state") == "FAILED":
                return f"task {t.get('id')} on {t.get('worker_id')}: {t.get('trace', '')}"
        return None


class ConnectError(RuntimeError):
    """The Connect REST API refused a request; the message carries its answer."""


class KafkaConnectResource(dg.ConfigurableResource):
    """A Kafka Connect worker's REST API (CONNECT_URL)."""

    url: str
    request_timeout_s: float = 15.0

    def request(self, path: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url.rstrip('/')}{path}", data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.request_timeout_s) as response:
                raw, status = response.read(), response.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw) if raw.strip() else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def put_config(self, name: str, config: Mapping[str, str]) -> bool:
        """Create or update the connector (idempotent); True when it was created."""
        status, body = self.request(f"/connectors/{name}/config", "PUT", dict(config))
        if status not in (200, 201):
            raise ConnectError(f"PUT /connectors/{name}/config answered {status}: {body}")
        return status == 201

    def status(self, name: str) -> ConnectorStatus | None:
        status, body = self.request(f"/connectors/{name}/status")
        if status == 404:
            return None
        if status != 200:
            raise ConnectError(f"GET /connectors/{name}/status answered {status}: {body}")
        return ConnectorStatus(
            name,
            body["connector"]["state"],
            body["connector"].get("worker_id", ""),
            list(body.get("tasks") or []),
        )

    def stored_config(self, name: str) -> dict[str, str]:
        status, body = self.request(f"/connectors/{name}/config")
        return body if status == 200 else {}

    def wait_running(self, name: str, timeout_s: float = 120.0) -> tuple[ConnectorStatus, float]:
        """Poll until the connector and every task run; a FAILED task raises with its trace."""
        began = time.monotonic()
        last: ConnectorStatus | None = None
        while time.monotonic() - began < timeout_s:
            try:
                last = self.status(name)
            except (OSError, ConnectError):
                last = None  # a worker restarting or rebalancing answers 409/5xx for a moment
            if last is not None:
                trace = last.failed_trace
                if trace or last.state == "FAILED":
                    raise ConnectError(trace or f"connector {name} FAILED")
                if last.running:
                    return last, time.monotonic() - began
            time.sleep(0.25)
        raise ConnectError(
            f"connector {name} not RUNNING after {timeout_s:.0f}s: "
            f"{last.state if last else 'no status'} {last.task_states if last else ''}"
        )

    def snapshot_done(self, name: str) -> bool:
        """Connect holds a committed offset of the connector that is not a snapshot's: the
        initial snapshot is over and its events were written before that offset was."""
        status, body = self.request(f"/connectors/{name}/offsets")
        if status != 200 or not isinstance(body, dict):
            return False
        offsets = [o.get("offset") or {} for o in body.get("offsets") or []]
        return bool(offsets) and not any(
            str(o.get("snapshot", "false")).lower() not in ("false", "") for o in offsets
        )

    def delete(self, name: str, reset_offsets: bool = True, timeout_s: float = 30.0) -> None:
        """Remove the connector; with `reset_offsets`, its source offsets too.

        Connect keeps a deleted connector's offsets, so a new connector of the same name would
        resume from them (and skip its snapshot) against a slot that may be gone. Offsets can
        only be reset while the connector is STOPPED.
        """
        if self.status(name) is None:
            return
        if reset_offsets:
            self.request(f"/connectors/{name}/stop", "PUT")
            deadline = time.monotonic() + timeout_s
            while (s := self.status(name)) is not None and s.state != "STOPPED":
                if time.monotonic() > deadline:
                    raise ConnectError(f"connector {name} did not stop: {s.state}")
                time.sleep(0.25)
            status, body = self.request(f"/connectors/{name}/offsets", "DELETE")
            if status != 200:
                raise ConnectError(f"DELETE /connectors/{name}/offsets answered {status}: {body}")
        self.request(f"/connectors/{name}", "DELETE")


class SourceDatabaseResource(dg.ConfigurableResource):
    """The legacy PostgreSQL (SOURCE_DSN, an administrator) and the role Debezium logs in as."""

    dsn: str
    cdc_user: str = "cdc"
    connect_timeout_s: int = 10

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=self.connect_timeout_s)
        try:
            yield conn
        finally:
            conn.close()

    @staticmethod
    def mark(conn: psycopg.Connection) -> str:
        """Write a position marker into the WAL and return the WAL position after it.

        A slot that has confirmed this position has streamed past it: every change committed
        before is in Kafka. Without the marker an idle source (or a connector still taking its
        snapshot, when the slot does not move) would look caught up at once.
        """
        conn.execute("SELECT pg_logical_emit_message(false, %s, 'position')", (POSITION_MARKER,))
        # The insert position: pg_current_wal_lsn() is the *write* position, which can still be
        # before the marker (and before the slot's start), and would be passed at once.
        return conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]

    def wait_caught_up(self, slot_name: str, timeout_s: float = 60.0) -> float:
        """Seconds until the slot passed position markers written now, i.e. every change
        committed before this call is in Kafka; raises TimeoutError naming the slot.

        Two markers, one after the other: a connector creating its slot (Debezium creates it
        again after the snapshot) puts the slot past the first marker without streaming it, and
        its snapshot events may still be on their way to Kafka. Passing the second takes a
        streamed and committed position, which Connect records only after the events before it
        were written.
        """
        began = time.monotonic()
        self.wait_slot(slot_name, timeout_s)
        with self.connect() as conn:
            for _ in range(2):
                lsn = self.mark(conn)
                while not self.passed(conn, slot_name, lsn):
                    if time.monotonic() - began > timeout_s:
                        raise TimeoutError(
                            f"slot {slot_name} did not confirm {lsn} in {timeout_s:.0f}s"
                        )
                    time.sleep(0.25)
        return time.monotonic() - began

    @staticmethod
    def passed(conn: psycopg.Connection, slot_name: str, lsn: str) -> bool:
        row = conn.execute(
            "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots"
            " WHERE slot_name = %s",
            (lsn, slot_name),
        ).fetchone()
        return bool(row and row[0])

    def wait_slot(self, slot_name: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """The slot, once the connector's task has created it (it does so after RUNNING)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.slot(slot_name)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"replication slot {slot_name} was not created in {timeout_s}s")
            time.sleep(0.25)

    def slot(self, slot_name: str) -> dict[str, Any] | None:
        """The slot's position and lag: confirmed_flush_lsn, active, lag_bytes."""
        with self.connect() as conn:
            row = conn.execute(
                "SELECT confirmed_flush_lsn::text, active,"
                " pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,"
                " pg_current_wal_lsn()::text"
                " FROM pg_replication_slots WHERE slot_name = %s",
                (slot_name,),
            ).fetchone()
        if row is None:
            return None
        return {
            "confirmed_flush_lsn": row[0],
            "active": bool(row[1]),
            "lag_bytes": int(row[2] or 0),
            "current_wal_lsn": row[3],
        }
