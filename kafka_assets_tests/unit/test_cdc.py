"""CDC's pure parts: Connect schema -> Spark schema, envelope parsing, the mirror SQL, the YAML."""

import json
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
from psycopg import sql
from pyspark.sql import types as T

from kafka_assets.cdc.assets import (
    MIRROR_MAX_OFFSETS,
    changes_stream,
    connector_config,
    mirror_match_queries,
)
from kafka_assets.cdc.connect import (
    PASSWORD_REFERENCE,
    KafkaConnectResource,
    SourceDatabaseResource,
)
from kafka_assets.cdc.envelope import (
    EnvelopeSchema,
    SchemaError,
    connect_field,
    connect_fields,
    mirror_rows,
    parse_envelopes,
)
from kafka_assets.definitions import PipelineConflict, build_definitions, cdc_sources
from kafka_assets.local.connect_worker import ConnectWorker
from kafka_assets.warehouse import mirror
from kafka_assets_tests.pipelines import defs_package

# -- Connect schemas, as Debezium 3.7 writes them (JSON converter, schemas enabled) ---------------

CUSTOMER_ROW = {
    "type": "struct",
    "name": "legacy.shop.customers.Value",
    "optional": True,
    "fields": [
        {"type": "int32", "optional": False, "field": "customer_id"},
        {"type": "string", "optional": False, "field": "email"},
        {
            "type": "string",
            "optional": False,
            "name": "io.debezium.time.ZonedTimestamp",
            "field": "created_at",
        },
        {
            "type": "string",
            "optional": False,
            "parameters": {
                "__debezium.source.column.type": "NUMERIC",
                "__debezium.source.column.length": "10",
                "__debezium.source.column.scale": "2",
            },
            "field": "balance",
        },
        {"type": "int32", "optional": True, "name": "io.debezium.time.Date", "field": "born"},
    ],
}
KEY_SCHEMA = {
    "type": "struct",
    "name": "legacy.shop.customers.Key",
    "fields": [{"type": "int32", "optional": False, "field": "customer_id"}],
}


def envelope(row_schema: dict, payload: dict) -> bytes:
    schema = {
        "type": "struct",
        "name": "legacy.shop.customers.Envelope",
        "fields": [
            {**row_schema, "field": "before"},
            {**row_schema, "field": "after"},
            {"type": "struct", "field": "source", "fields": []},
            {"type": "string", "field": "op"},
        ],
    }
    return json.dumps({"schema": schema, "payload": payload}).encode()


def key(customer_id: int) -> bytes:
    return json.dumps({"schema": KEY_SCHEMA, "payload": {"customer_id": customer_id}}).encode()


def with_field(schema: dict, field: dict) -> dict:
    return {**schema, "fields": [*schema["fields"], field]}


def test_connect_types_map_to_spark_and_postgres_types() -> None:
    mapped = {f.name: f for f in connect_fields(CUSTOMER_ROW)}
    assert mapped["customer_id"].spark == T.IntegerType()
    assert mapped["email"].spark == T.StringType()
    assert mapped["created_at"].spark == T.TimestampType()
    assert mapped["balance"].wire == T.StringType()  # decimal.handling.mode=string
    assert mapped["balance"].spark == T.DecimalType(10, 2)
    assert mapped["born"].wire == T.IntegerType() and mapped["born"].spark == T.DateType()
    assert [f.pg_type for f in mapped.values()] == [
        "integer",
        "text",
        "timestamp with time zone",
        "numeric(10,2)",
        "date",
    ]
    for ctype, spark in [
        ("int16", T.ShortType()),
        ("int64", T.LongType()),
        ("float64", T.DoubleType()),
        ("boolean", T.BooleanType()),
    ]:
        assert connect_field({"type": ctype, "field": "x"}).spark == spark
    assert connect_field({"type": "int64", "name": "io.debezium.time.MicroTimestamp", "field": "t"})
    assert connect_field({"type": "string", "field": "n", "parameters": {}}).spark == T.StringType()


def test_a_binary_decimal_or_unknown_type_is_named() -> None:
    binary = {"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "field": "price"}
    with pytest.raises(SchemaError, match="'price'.*decimal.handling.mode=string"):
        connect_field(binary)
    with pytest.raises(SchemaError, match="'weird'.*'float128'"):
        connect_field({"type": "float128", "field": "weird"})


def test_schema_is_the_union_of_the_sampled_events_with_an_added_optional_field() -> None:
    added = with_field(CUSTOMER_ROW, {"type": "int32", "optional": True, "field": "loyalty"})
    schema = EnvelopeSchema.from_messages(
        [
            (key(1), envelope(CUSTOMER_ROW, {"op": "r"})),
            (key(1), None),  # a tombstone has no schema
            (key(2), envelope(added, {"op": "u"})),
            (None, b"not json"),
        ]
    )
    assert [f.name for f in schema.key] == ["customer_id"]
    assert [f.name for f in schema.row] == [
        "customer_id",
        "email",
        "created_at",
        "balance",
        "born",
        "loyalty",
    ]
    assert schema.spark_row(wire=False)["loyalty"].dataType == T.IntegerType()
    assert EnvelopeSchema.from_messages([]).row == ()


# -- parsing on a local Spark --------------------------------------------------------------------

RAW = T.StructType(
    [
        T.StructField("key", T.BinaryType()),
        T.StructField("value", T.BinaryType()),
        T.StructField("topic", T.StringType()),
        T.StructField("partition", T.IntegerType()),
        T.StructField("offset", T.LongType()),
        T.StructField("timestamp", T.TimestampType()),
    ]
)
ROW = {
    "customer_id": 1,
    "email": "ada@example.com",
    "created_at": "2026-11-25T06:12:33.713164Z",
    "balance": "12.50",
    "born": 1,
}


def raw_frame(spark, messages):
    from datetime import datetime

    rows = [
        (k, v, "legacy.shop.customers", 0, i, datetime(2026, 11, 25))
        for i, (k, v) in enumerate(messages)
    ]
    return spark.createDataFrame(rows, RAW)


def change(op, before, after, lsn):
    return {
        "op": op,
        "before": before,
        "after": after,
        "source": {"lsn": lsn, "ts_ms": 1795587553713},
        "ts_ms": 1795587553900,
    }


def test_envelopes_parse_into_typed_changes_tombstones_and_errors(spark) -> None:
    messages = [
        (key(1), envelope(CUSTOMER_ROW, change("r", None, ROW, 100))),
        (key(1), envelope(CUSTOMER_ROW, change("u", ROW, {**ROW, "balance": "13.00"}, 200))),
        (key(1), envelope(CUSTOMER_ROW, change("d", {**ROW, "balance": "13.00"}, None, 300))),
        (key(1), None),
        (key(9), b"{not json"),
        (key(9), envelope(CUSTOMER_ROW, change("x", None, ROW, 400))),
    ]
    schema = EnvelopeSchema.from_messages(messages)
    out = parse_envelopes(raw_frame(spark, messages), schema, "s").orderBy("offset").collect()

    assert [r.op for r in out[:3]] == ["r", "u", "d"]
    assert [r.lsn for r in out[:3]] == [100, 200, 300]
    assert (
        out[0].after.balance == Decimal("12.50") and out[0].after.born.isoformat() == "1970-01-02"
    )
    assert out[0].after.created_at.isoformat().startswith("2026-11-25T06:12:33.713164")
    assert out[1].before.balance == Decimal("12.50") and out[1].after.balance == Decimal("13.00")
    assert out[2].after is None and out[2].change_key.customer_id == 1
    assert out[3].tombstone and out[3].error is None  # a tombstone is never an error
    assert out[4].error.startswith("not a Debezium change event") and out[4].raw_value
    assert out[5].error == "unsupported op: x"

    rows, keys, fields = mirror_rows(parse_envelopes(raw_frame(spark, messages), schema, "s"))
    got = {(r._cdc_op, r.customer_id, r.balance) for r in rows.collect()}
    # The delete carries its before image; the tombstone and the two errors are left out.
    assert got == {
        ("r", 1, Decimal("12.50")),
        ("u", 1, Decimal("13.00")),
        ("d", 1, Decimal("13.00")),
    }
    assert keys == ["customer_id"]
    assert [f.name for f in fields] == ["customer_id", "email", "created_at", "balance", "born"]


def test_a_column_the_run_did_not_sample_fails_the_run_instead_of_being_dropped(spark) -> None:
    added = with_field(CUSTOMER_ROW, {"type": "int32", "optional": True, "field": "loyalty"})
    sampled = EnvelopeSchema.from_messages([(key(1), envelope(CUSTOMER_ROW, {"op": "r"}))])
    late = [(key(1), envelope(added, change("u", ROW, {**ROW, "loyalty": 3}, 500)))]
    with pytest.raises(Exception, match="loyalty not in the schema sampled"):
        parse_envelopes(raw_frame(spark, late), sampled, "s").collect()


# -- mirror SQL -----------------------------------------------------------------------------------


def render(composed) -> str:
    return composed.as_string(None)


HARD = mirror.MirrorTable(
    "legacy_products", ("product_id",), (("product_id", "integer"), ("price", "numeric(10,2)"))
)
SOFT = mirror.MirrorTable(
    "legacy_customers",
    ("customer_id",),
    (("customer_id", "integer"), ("email", "text")),
    "soft",
    "_deleted",
)
T_ = sql.SQL("t_schema.tbl")
LATEST = sql.Identifier("_latest")
TOMB = sql.SQL("t_schema.tomb")


def test_newest_change_per_key_is_by_lsn_then_offset() -> None:
    text = render(mirror.latest_sql(HARD, sql.Identifier("_in"), LATEST))
    assert 'DISTINCT ON ("product_id")' in text
    assert 'ORDER BY "product_id", "_cdc_lsn" DESC, "_cdc_offset" DESC' in text


def test_hard_delete_sql_is_position_guarded_and_remembered() -> None:
    delete, remember, upsert = (render(s) for s in mirror.apply_sql(HARD, T_, LATEST, TOMB))
    assert delete.startswith("DELETE FROM t_schema.tbl AS t USING")
    assert """("t"."_cdc_lsn", "t"."_cdc_offset") < ("l"."_cdc_lsn", "l"."_cdc_offset")""" in delete
    assert remember.startswith("INSERT INTO t_schema.tomb")
    assert 'ON CONFLICT ("product_id") DO UPDATE' in remember
    # An insert or update applies only if newer than the stored row and than a delete of its key:
    # a replayed insert of a deleted row stays deleted.
    assert "NOT EXISTS (SELECT 1 FROM t_schema.tomb AS d" in upsert
    assert (
        """("d"."_cdc_lsn", "d"."_cdc_offset") >= ("l"."_cdc_lsn", "l"."_cdc_offset")""" in upsert
    )
    newer = (
        '("t"."_cdc_lsn", "t"."_cdc_offset") < ("excluded"."_cdc_lsn", "excluded"."_cdc_offset")'
    )
    assert upsert.endswith(f"WHERE {newer}")
    assert '"product_id" = excluded' not in upsert  # the key is never rewritten


def test_soft_delete_sql_marks_the_row_and_keeps_its_values() -> None:
    (upsert,) = (render(s) for s in mirror.apply_sql(SOFT, T_, LATEST, TOMB))
    assert """("l"."_cdc_op" = 'd')""" in upsert or """l."_cdc_op" = 'd'""" in upsert
    assert (
        '"email" = CASE WHEN excluded."_deleted" THEN t."email" ELSE excluded."email" END' in upsert
    )
    assert '"_deleted" = excluded."_deleted"' in upsert
    assert "DELETE" not in upsert


def test_mirror_ddl_has_the_position_columns_and_the_soft_delete_flag() -> None:
    text = render(mirror.create_mirror_sql(SOFT, T_))
    assert '"_deleted" boolean NOT NULL DEFAULT false' in text
    for column in ('"_cdc_lsn" bigint', '"_cdc_partition" integer', '"_cdc_offset" bigint'):
        assert column in text
    assert text.endswith('PRIMARY KEY ("customer_id"))')
    assert render(mirror.add_column_sql(T_, "loyalty", "integer")) == (
        'ALTER TABLE t_schema.tbl ADD COLUMN IF NOT EXISTS "loyalty" integer'
    )


def test_match_queries_cast_the_source_to_the_mirror_types_and_skip_soft_deleted_rows() -> None:
    source, warehouse = mirror_match_queries(
        sql.Identifier("shop", "customers"),
        T_,
        [("email", "text"), ("n", "numeric(10,2)")],
        "_deleted",
    )
    assert 'ROW("email"::text, "n"::numeric(10,2))::text' in render(source)
    assert render(warehouse).endswith('FROM t_schema.tbl WHERE NOT "_deleted"')


# -- the YAML, the connector config, the worker ------------------------------------------------


def test_the_connector_config_names_the_password_never_holds_it() -> None:
    (source,) = cdc_sources
    config = connector_config(
        source, SourceDatabaseResource(dsn="postgresql://admin:s3cret@db:5433/legacy")
    )
    assert config["database.password"] == PASSWORD_REFERENCE == "${env:SOURCE_CDC_PASSWORD}"
    assert "s3cret" not in json.dumps(config)
    assert (config["database.hostname"], config["database.port"]) == ("db", "5433")
    assert config["table.include.list"] == "shop.customers,shop.products,shop.orders"
    assert config["slot.name"] == "kafka_assets_legacy"
    assert config["decimal.handling.mode"] == "string"
    assert "shop.cdc_heartbeat" in config["heartbeat.action.query"]
    worker = ConnectWorker(Path("/nonexistent"), "127.0.0.1:9").worker_properties()
    assert worker["config.providers"] == "env"
    assert worker["config.providers.env.class"].endswith("EnvVarConfigProvider")


CDC_YAML = textwrap.dedent(
    """\
    type: kafka_assets.lib.CdcSource
    attributes:
      connector:
        name: other
        topic_prefix: other
        slot_name: other_slot
        publication: pub
      tables:
        - name: customers
          table: {table}
          delete: {delete}
    """
)


def _failure_chain(package) -> list[str]:
    with pytest.raises(Exception) as excinfo:  # noqa: PT011 - Dagster wraps the cause
        build_definitions(package)
    chain, error = [], excinfo.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    return chain


@pytest.mark.parametrize(
    ("table", "delete", "message"),
    [
        ("m_customers", "{mode: soft}", "delete.column is required for mode soft"),
        ("m_customers", "{mode: hard, column: gone}", "delete.column is only for mode soft"),
        ("m_customers", "{mode: sometimes}", "mode"),
        ("bad-name", "{mode: hard}", "tables.table 'bad-name' must be an identifier"),
    ],
)
def test_yaml_mistakes_are_named(tmp_path, table, delete, message) -> None:
    package = defs_package(tmp_path, {"other": CDC_YAML.format(table=table, delete=delete)})
    chain = _failure_chain(package)
    assert any(message in text for text in chain), chain
    assert any("other/defs.yaml" in text or "defs.yaml" in text for text in chain), chain


def test_a_password_in_yaml_is_refused(tmp_path) -> None:
    text = CDC_YAML.format(table="m", delete="{mode: hard}").replace(
        "publication: pub", "publication: pub\n    settings: {database.password: x}"
    )
    chain = _failure_chain(defs_package(tmp_path, {"other": text}))
    assert any("a password never goes in YAML" in t for t in chain), chain


def test_a_mirror_table_cannot_be_a_pipelines_table(tmp_path) -> None:
    text = CDC_YAML.format(table="orders", delete="{mode: hard}")
    with pytest.raises(PipelineConflict, match="table 'orders'"):
        build_definitions(defs_package(tmp_path, {"other": text}, with_shop=True))


# -- the connector asset against a fake Connect REST API ---------------------------------------


class FakeConnect(KafkaConnectResource):
    """Answers like Connect: the PUT config is kept; the status is what the test sets."""

    task_state: str = "RUNNING"

    def request(self, path, method="GET", body=None):
        if method == "PUT" and path.endswith("/config"):
            FakeConnect.stored = body
            return 201, body
        if path.endswith("/config"):
            return 200, FakeConnect.stored
        if path.endswith("/status"):
            task = {"id": 0, "state": self.task_state, "worker_id": "w1:8083"}
            if self.task_state == "FAILED":
                task["trace"] = "org.postgresql.util.PSQLException: password authentication failed"
            return 200, {"connector": {"state": "RUNNING", "worker_id": "w1:8083"}, "tasks": [task]}
        return 404, None


class FakeSource(SourceDatabaseResource):
    def slot(self, slot_name):
        return {"confirmed_flush_lsn": "0/1A2B3C", "active": True, "lag_bytes": 56}


def _materialize_connector(connect: FakeConnect):
    import dagster as dg

    from kafka_assets.cdc.assets import build_connector_asset

    (source,) = cdc_sources
    asset = build_connector_asset(source, source.connector_key, [], "legacy")
    return dg.materialize(
        [asset],
        resources={
            "kafka_connect": connect,
            "source_db": FakeSource(dsn="postgresql://admin:s3cret@db:5432/legacy"),
        },
        raise_on_error=False,
    )


def test_connector_asset_records_states_worker_and_slot_but_no_secret() -> None:
    result = _materialize_connector(FakeConnect(url="http://connect:8083"))
    assert result.success
    (mat,) = result.asset_materializations_for_node("connect__legacy_shop")
    md = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    assert md["connector_state"] == "RUNNING" and md["task_states"] == {"0": "RUNNING"}
    assert md["worker_id"] == "w1:8083" and md["confirmed_flush_lsn"] == "0/1A2B3C"
    assert md["config"]["database.password"] == "${env:SOURCE_CDC_PASSWORD}"
    assert "s3cret" not in str(md) and FakeConnect.stored["database.password"].startswith("${env:")


def test_a_failed_task_fails_the_asset_with_the_workers_trace() -> None:
    result = _materialize_connector(FakeConnect(url="http://connect:8083", task_state="FAILED"))
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    text = str(failure.event_specific_data.error)
    assert "password authentication failed" in text and "task 0 on w1:8083" in text


def test_a_mirror_stream_keeps_its_own_lower_micro_batch_bound(tmp_path: Path) -> None:
    """A mirror's load holds a micro-batch whole; a parsing stream's reads it in chunks."""
    import kafka_assets.defs
    from kafka_assets.definitions import load_pipelines
    from kafka_assets.spark.resources import StreamingSettings

    _, pipelines, _ = load_pipelines(kafka_assets.defs)
    parsing = pipelines[0].events.spec
    changes = changes_stream("legacy_customers_changes", "legacy.public.customers")
    default = StreamingSettings(checkpoint_base=str(tmp_path), staging_base=str(tmp_path))
    assert default.max_offsets(changes) == MIRROR_MAX_OFFSETS < default.max_offsets(parsing)
    assert default.max_offsets(parsing) == default.max_offsets_per_trigger
    small = StreamingSettings(
        checkpoint_base=str(tmp_path), staging_base=str(tmp_path), max_offsets_per_trigger=500
    )
    assert small.max_offsets(changes) == small.max_offsets(parsing) == 500
