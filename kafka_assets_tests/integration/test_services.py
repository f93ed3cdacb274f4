"""The foundation is real: a KRaft broker, Spark's Kafka connector, PostgreSQL, dagster-postgres."""

import uuid

import dagster as dg
import psycopg
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from kafka_assets.kafka.resources import KafkaResource
from kafka_assets.local.services import write_dagster_yaml
from kafka_assets.spark.streams import StreamSpec, run_available_now
from kafka_assets.warehouse.io_manager import copy_arrow, create_table_sql
from kafka_assets.warehouse.resources import PostgresResource
from kafka_assets.warehouse.tables import Column, Table

pytestmark = pytest.mark.integration


def _topic(services, partitions: int = 2) -> str:
    name = f"it-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": services.bootstrap_servers})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)
    return name


def test_broker_produce_consume_round_trip(services):
    topic = _topic(services)
    producer = Producer(
        {"bootstrap.servers": services.bootstrap_servers, "enable.idempotence": True, "acks": "all"}
    )
    for i in range(100):
        producer.produce(topic, value=f"v{i}".encode(), key=f"k{i % 7}".encode())
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": services.bootstrap_servers,
            "group.id": f"g-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    seen = []
    try:
        for _ in range(60):
            for msg in consumer.consume(200, timeout=1.0):
                assert msg.error() is None
                seen.append(msg.value().decode())
            if len(seen) >= 100:
                break
    finally:
        consumer.close()
    assert sorted(seen) == sorted(f"v{i}" for i in range(100))

    ends = KafkaResource(bootstrap_servers=services.bootstrap_servers).end_offsets([topic])
    assert sum(ends[topic].values()) == 100


def test_spark_reads_topic_with_connector_and_rows_land_in_postgres(services, spark, tmp_path):
    """readStream(kafka) + availableNow + checkpoint -> staged batches -> COPY into PostgreSQL."""
    topic = _topic(services, partitions=3)
    producer = Producer({"bootstrap.servers": services.bootstrap_servers})
    for i in range(500):
        producer.produce(topic, value=str(i).encode(), key=str(i).encode())
    assert producer.flush(30) == 0

    from pyspark.sql import functions as F

    spec = StreamSpec(
        "roundtrip",
        topic,
        lambda raw: raw.select(
            F.col("partition"), F.col("offset"), F.col("value").cast("string").alias("v")
        ),
        "append",
        "test stream",
    )
    options = KafkaResource(bootstrap_servers=services.bootstrap_servers).spark_options()
    run = run_available_now(
        spark, spec, options, str(tmp_path / "cp"), str(tmp_path / "staging"), 200
    )
    assert run.input_rows == 500
    assert len([b for b in run.batches if b["input_rows"]]) >= 3  # maxOffsetsPerTrigger=200
    assert sum(run.end_offsets.values()) == 500

    # A second availableNow run with nothing new consumes nothing: the checkpoint holds.
    again = run_available_now(
        spark, spec, options, str(tmp_path / "cp"), str(tmp_path / "staging"), 200
    )
    assert again.input_rows == 0

    rows = spark.read.parquet(str(tmp_path / "staging" / "query=*" / "batch=*"))
    table = Table(
        "roundtrip",
        (Column("partition", "integer"), Column("offset", "bigint"), Column("v", "text")),
        ("partition", "offset"),
    )
    warehouse = PostgresResource(dsn=services.warehouse_dsn, schema_name="it_services")
    with warehouse.connect(autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(create_table_sql(table, warehouse.table("roundtrip")))
        cur.execute(f"TRUNCATE {warehouse.schema_name}.roundtrip")
        copy_arrow(cur, warehouse.table("roundtrip"), table.column_names, rows.toArrow())
        cur.execute(f"SELECT count(*), count(DISTINCT v) FROM {warehouse.schema_name}.roundtrip")
        assert cur.fetchone() == (500, 500)


def test_dagster_instance_on_postgres(services, tmp_path, monkeypatch):
    """Runs and events are stored by dagster-postgres in the real server when a URL is given."""
    dsn = services.warehouse_dsn.rsplit("/", 1)[0] + "/dagster"
    # psycopg2 named explicitly: SQLAlchemy 2.1 maps postgresql:// to psycopg 3, which
    # dagster-postgres's NOTIFY statements do not support.
    url = dsn.replace("postgresql://", "postgresql+psycopg2://", 1)
    monkeypatch.setenv("DAGSTER_PG_URL", url)
    home = tmp_path / "dagster_home"
    write_dagster_yaml(home, postgres=True)

    @dg.asset
    def hello() -> int:
        return 1

    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = dg.materialize([hello], instance=instance)
        assert result.success
        run_id = result.run_id
    with psycopg.connect(dsn) as conn:
        stored = conn.execute("SELECT status FROM runs WHERE run_id = %s", (run_id,)).fetchone()
        events = conn.execute(
            "SELECT count(*) FROM event_logs WHERE run_id = %s", (run_id,)
        ).fetchone()[0]
    assert stored == ("SUCCESS",)
    assert events > 0
