"""What a user would pick instead: a Kafka Connect sink moving the orders into PostgreSQL.

Debezium's JDBC sink connector (3.6.0.Final: Central serves no 3.7.0.Final of it) runs on the
bench's own Kafka Connect 4.3.1 worker and upserts by order id into a table made with the same
DDL as the pipeline's. The sink needs a schema with every record, so the same valid rows are
sent, as they are produced, to a second topic in JsonConverter's schema-and-payload form (what a
user without a schema registry sends). The clock runs from the connector's creation until an
end marker from every partition is in the table.
"""

import json
import time
from urllib.parse import urlsplit

from psycopg import sql

from kafka_assets.cdc.connect import KafkaConnectResource
from kafka_assets.warehouse.io_manager import create_table_sql
from kafka_assets.warehouse.resources import PostgresResource
from kafka_assets.warehouse.tables import Table

TOPIC = "bench_orders_with_schema"
CONNECTOR = "bench-jdbc-sink"
MARKER = "__end__"
_TYPES = {"source_partition": "int32", "source_offset": "int64", "amount": "double"}


class SchemaTopic:
    """Sends rows of `table` as JsonConverter records (schema + payload), keyed like the source."""

    def __init__(self, kafka, table: Table, partitions: int):
        self.table, self.partitions, self.rows = table, partitions, 0
        kafka.ensure_topic(TOPIC, partitions, 1, {"cleanup.policy": "delete"})
        self.producer = kafka.producer()
        self.schema = {
            "type": "struct",
            "name": "orders",
            "optional": False,
            "fields": [
                {"field": c, "type": _TYPES.get(c, "string"), "optional": False}
                for c in table.column_names
            ],
        }

    def send(self, key: bytes | None, doc: dict, partition: int | None = None) -> None:
        payload = {}
        for name in self.table.column_names:
            value = doc.get(name)
            if name == "source_partition":
                value = 0
            elif name == "source_offset":
                value = self.rows
            elif name == "amount":
                value = float(value)
            elif isinstance(value, list | dict):
                value = json.dumps(value)
            payload[name] = value
        value = json.dumps({"schema": self.schema, "payload": payload}).encode()
        extra = {} if partition is None else {"partition": partition}
        while True:
            try:
                self.producer.produce(TOPIC, value, key, **extra)
                break
            except BufferError:
                self.producer.poll(0.1)
        self.rows += 1
        if self.rows % 1000 == 0:
            self.producer.poll(0)

    def close(self, template: dict) -> None:
        """One end marker per partition, then wait for every acknowledgement."""
        for p in range(self.partitions):
            self.send(f"{MARKER}{p}".encode(), {**template, "order_id": f"{MARKER}{p}"}, p)
        if self.producer.flush(120):
            raise RuntimeError(f"messages to {TOPIC} were not all acknowledged")


def measure_sink(
    connect_url: str, warehouse_dsn: str, table: Table, partitions: int, rows: int
) -> dict[str, object]:
    warehouse = PostgresResource(dsn=warehouse_dsn, schema_name="bench_connect")
    target = warehouse.table(table.name)
    with warehouse.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))
        conn.execute(create_table_sql(table, target))
    dsn = urlsplit(warehouse_dsn)
    config = {
        "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
        "tasks.max": "2",
        "topics": TOPIC,
        # stringtype=unspecified lets PostgreSQL type the text values (timestamptz, jsonb).
        "connection.url": (
            f"jdbc:postgresql://{dsn.hostname}:{dsn.port}{dsn.path}"
            "?stringtype=unspecified&reWriteBatchedInserts=true"
        ),
        "connection.username": dsn.username or "",
        "connection.password": dsn.password or "",
        "insert.mode": "upsert",
        "primary.key.mode": "record_value",
        "primary.key.fields": "order_id",
        "collection.name.format": f"bench_connect.{table.name}",
        "schema.evolution": "none",
        "batch.size": "5000",
        # Keeps the newest record per key within a batch: a rewritten multi-row upsert cannot
        # touch one key twice, and it is the sink's own answer to a keyed topic.
        "use.reduction.buffer": "true",
        "key.converter": "org.apache.kafka.connect.storage.StringConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter.schemas.enable": "true",
        "consumer.override.auto.offset.reset": "earliest",
        "consumer.override.max.poll.records": "5000",
    }
    connect = KafkaConnectResource(url=connect_url)
    count_markers = sql.SQL("SELECT count(*) FROM {} WHERE order_id LIKE %s").format(target)
    began = time.monotonic()
    status, body = connect.request(f"/connectors/{CONNECTOR}/config", "PUT", config)
    if status not in (200, 201):
        raise RuntimeError(f"PUT {CONNECTOR} answered {status}: {body}")
    try:
        while True:
            with warehouse.connect() as conn:
                done = conn.execute(count_markers, (f"{MARKER}%",)).fetchone()[0]
            if done == partitions:
                break
            _, state = connect.request(f"/connectors/{CONNECTOR}/status")
            failed = [t for t in (state or {}).get("tasks", []) if t.get("state") == "FAILED"]
            if failed:
                raise RuntimeError(f"{CONNECTOR} failed: {failed[0].get('trace', '')[:2000]}")
            time.sleep(0.5)
        seconds = time.monotonic() - began
    finally:
        connect.request(f"/connectors/{CONNECTOR}", "DELETE")
    with warehouse.connect() as conn:
        loaded = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(target)).fetchone()[0]
    return {
        "connector": "io.debezium:debezium-connector-jdbc:3.6.0.Final, upsert, 2 tasks",
        "rows_sent": rows,
        "table_rows": loaded - partitions,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
    }
