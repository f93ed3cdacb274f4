"""Change data capture as assets: the connector, its topics, and checks that hold the warehouse's
mirror tables to the source.

The source tables are external assets (lineage starts there); the connector is materialized by
putting its config to Kafka Connect; its topics are created by the worker and only described
here; streams and mirror tables are built in `kafka_assets.lib.cdc`.
"""

import time
from collections.abc import Sequence

import dagster as dg
from psycopg import sql

from kafka_assets.cdc.connect import (
    PASSWORD_REFERENCE,
    ConnectError,
    KafkaConnectResource,
    SourceDatabaseResource,
    debezium_postgres_config,
)
from kafka_assets.cdc.envelope import EnvelopeSchema, mirror_rows, parse_envelopes, sample_messages
from kafka_assets.kafka.resources import KafkaResource
from kafka_assets.kafka.topics import offsets_version, topic_metadata
from kafka_assets.spark.assets import PRIORITY_TAG, committed_offsets
from kafka_assets.spark.staging import StagedStream
from kafka_assets.spark.streams import StreamSpec
from kafka_assets.spec import CDC_COLUMNS, CdcSourceSpec, MirrorSpec
from kafka_assets.warehouse.assets import FOLLOW_STREAMS, TABLE_PRIORITY
from kafka_assets.warehouse.checks import FOLLOW_TABLE
from kafka_assets.warehouse.io_manager import MirrorLoad
from kafka_assets.warehouse.mirror import mirror_columns_sql
from kafka_assets.warehouse.resources import PostgresResource

MIRROR_MAX_OFFSETS = 1_000_000
"""The most change events in one micro-batch of a mirror's stream."""


def connector_config(spec: CdcSourceSpec, source_db: SourceDatabaseResource) -> dict[str, str]:
    """What is PUT to Connect: the password is a reference the worker resolves, never a value."""
    c = spec.connector
    return debezium_postgres_config(
        source_db.dsn,
        user=source_db.cdc_user,
        password=PASSWORD_REFERENCE,
        topic_prefix=c.topic_prefix,
        slot_name=c.slot_name,
        publication=c.publication,
        schema=spec.source.schema_name,
        tables=tuple(t.name for t in spec.tables),
        heartbeat_table=c.heartbeat_table,
        heartbeat_interval_ms=c.heartbeat_interval_ms,
        extra=c.settings,
    )


def _redacted(config: dict[str, str]) -> dict[str, str]:
    return {
        k: (v if "password" not in k or v == PASSWORD_REFERENCE else "<redacted>")
        for k, v in config.items()
    }


class ConnectorConfig(dg.Config):
    running_timeout_s: float = 120.0
    """How long the connector and its task may take to reach RUNNING."""


def build_connector_asset(
    spec: CdcSourceSpec, key: dg.AssetKey, deps: Sequence[dg.AssetKey], group: str
) -> dg.AssetsDefinition:
    name = spec.connector.name

    @dg.asset(
        key=key,
        deps=list(deps),
        group_name=group,
        kinds={"debezium"},
        description=(
            f"Debezium connector `{name}` in Kafka Connect: its config is put (create or update) "
            "and it is materialized once the connector and its task run."
        ),
        metadata={"kafka_connect/connector": name, "postgres/slot": spec.connector.slot_name},
    )
    def _connector(
        context: dg.AssetExecutionContext,
        config: ConnectorConfig,
        kafka_connect: KafkaConnectResource,
        source_db: SourceDatabaseResource,
    ) -> dg.MaterializeResult:
        wanted = connector_config(spec, source_db)
        try:
            created = kafka_connect.put_config(name, wanted)
            status, running_s = kafka_connect.wait_running(name, config.running_timeout_s)
        except ConnectError as exc:
            raise dg.Failure(
                description=f"Kafka Connect connector {name} did not start: {exc}",
                metadata={"connector": name},
            ) from exc
        context.log.info(
            f"connector {name} {'created' if created else 'updated'}, RUNNING after "
            f"{running_s:.1f}s on {status.worker_id}"
        )
        try:
            slot = source_db.wait_slot(spec.connector.slot_name, config.running_timeout_s)
        except TimeoutError as exc:
            raise dg.Failure(description=f"connector {name} is RUNNING but {exc}") from exc
        stored = kafka_connect.stored_config(name)
        return dg.MaterializeResult(
            metadata={
                "connector_state": status.state,
                "task_states": dg.MetadataValue.json(status.task_states),
                "worker_id": status.worker_id,
                "created": created,
                "running_after_s": round(running_s, 2),
                "confirmed_flush_lsn": slot.get("confirmed_flush_lsn", ""),
                "slot_lag_bytes": slot.get("lag_bytes", -1),
                "config": dg.MetadataValue.json(_redacted(stored or wanted)),
            }
        )

    return _connector


def build_cdc_topic_asset(
    topic: str, key: dg.AssetKey, connector: dg.AssetKey, group: str
) -> dg.AssetsDefinition:
    """A topic the Connect worker creates with the connector's settings: described, not created."""

    @dg.asset(
        key=key,
        deps=[connector],
        group_name=group,
        kinds={"kafka"},
        description=(
            f"Kafka topic `{topic}`: the change events of one source table, written by the "
            "connector (the worker creates it on the first event; it is only described here)."
        ),
        metadata={"kafka/topic": topic},
    )
    def _topic(context: dg.AssetExecutionContext, kafka: KafkaResource) -> dg.MaterializeResult:
        state = kafka.describe_topic(topic)
        if state is None:
            context.log.info(
                f"{topic} does not exist yet: the worker creates it on the first event"
            )
            return dg.MaterializeResult(metadata={"exists": False, "messages_total": 0})
        return dg.MaterializeResult(
            metadata={**topic_metadata(state), "exists": True},
            data_version=offsets_version({topic: state.end_offsets}),
        )

    return _topic


def changes_stream(name: str, topic: str) -> StreamSpec:
    """A stream whose schema is read from the topic's newest events when each run starts."""

    def prepare(client_config):
        schema = EnvelopeSchema.from_messages(sample_messages(client_config, topic))
        return lambda raw: parse_envelopes(raw, schema, name)

    return StreamSpec(
        name,
        topic,
        lambda raw: parse_envelopes(raw, EnvelopeSchema((), ()), name),
        "append",
        f"Every change event of {topic}, parsed against the schema the events carry; "
        "tombstones marked, malformed events with an error.",
        prepare=prepare,
        # A mirror's load collects a batch into Arrow, so its memory follows this bound.
        max_offsets_per_trigger=MIRROR_MAX_OFFSETS,
    )


def _rows(df):
    rows, keys, fields = mirror_rows(df)
    return rows, keys, [(f.name, f.pg_type) for f in fields]


def build_mirror_asset(
    spec: MirrorSpec, key: dg.AssetKey, stream_key: dg.AssetKey, group: str
) -> dg.AssetsDefinition:
    deletes = (
        f"a delete sets `{spec.delete.column}`"
        if spec.delete.mode == "soft"
        else "a delete removes the row"
    )

    @dg.asset(
        key=key,
        ins={"changes": dg.AssetIn(key=stream_key)},
        group_name=group,
        kinds={"postgres"},
        io_manager_key="warehouse_io_manager",
        op_tags={PRIORITY_TAG: str(TABLE_PRIORITY)},
        automation_condition=FOLLOW_STREAMS,
        description=(
            f"Mirror of the source table {spec.name}: changes applied in source order per key "
            f"(LSN, then Kafka offset), {deletes}; columns added in the source are added here."
        ),
        metadata={"kafka_assets/table": spec.table},
    )
    def _mirror(changes: StagedStream) -> MirrorLoad:
        return MirrorLoad(spec.table, changes, _rows, spec.delete.mode, spec.delete.column)

    return _mirror


# -- checks ----------------------------------------------------------------------------------------


class MatchConfig(dg.Config):
    catch_up_wait_s: float = 30.0
    """How long to wait for the slot to confirm the source's current WAL position."""


def _row_hash(columns: Sequence[tuple[str, str]], cast: bool) -> sql.Composed:
    """count(*) and an order-independent hash of the rows' text over `columns`."""
    values = sql.SQL(", ").join(
        sql.SQL("{}::{}").format(sql.Identifier(c), sql.SQL(t)) if cast else sql.Identifier(c)
        for c, t in columns
    )
    return sql.SQL(
        "SELECT count(*), coalesce(sum(hashtextextended(ROW({})::text, 0)::numeric), 0)"
    ).format(values)


def mirror_match_queries(
    source_table: sql.Composable,
    mirror_table: sql.Composable,
    columns: Sequence[tuple[str, str]],
    delete_column: str | None,
) -> tuple[sql.Composed, sql.Composed]:
    """(source query, mirror query): the source's columns cast to the mirror's types, so both
    sides render each value alike; soft-deleted mirror rows are not in the source."""
    source = _row_hash(columns, cast=True) + sql.SQL(" FROM {}").format(source_table)
    mirror = _row_hash(columns, cast=False) + sql.SQL(" FROM {}").format(mirror_table)
    if delete_column:
        mirror += sql.SQL(" WHERE NOT {}").format(sql.Identifier(delete_column))
    return source, mirror


def build_mirror_checks(
    spec: CdcSourceSpec,
    table: MirrorSpec,
    mirror_key: dg.AssetKey,
    stream_key: dg.AssetKey,
    topic: str,
) -> list[dg.AssetChecksDefinition]:
    slot_name = spec.connector.slot_name
    connector = spec.connector.name
    source_name = (spec.source.schema_name, table.name)
    internal = {*CDC_COLUMNS, "_loaded_at", table.delete.column}

    @dg.asset_check(
        asset=mirror_key,
        name=f"{table.table}_matches_source",
        automation_condition=FOLLOW_TABLE,
        description=(
            f"Once caught up (the slot confirmed the source's WAL position, the stream consumed "
            f"{topic} to its end), {table.table} has the rows of the source table "
            f"{'.'.join(source_name)}: same count, same order-independent hash."
        ),
    )
    def _matches(
        context: dg.AssetCheckExecutionContext,
        config: MatchConfig,
        warehouse: PostgresResource,
        source_db: SourceDatabaseResource,
        kafka: KafkaResource,
        kafka_connect: KafkaConnectResource,
    ) -> dg.AssetCheckResult:
        target = warehouse.table(table.table)
        with warehouse.connect() as conn:
            live = conn.execute(mirror_columns_sql(), (target.as_string(conn),)).fetchall()
        columns = [(c, t) for c, t in live if c not in internal]
        if source_db.slot(slot_name) is None or not kafka_connect.snapshot_done(connector):
            # A new connector's slot can be ahead of a marker while its snapshot's events are
            # still on their way to Kafka: compare only after Connect committed a streaming
            # offset.
            return dg.AssetCheckResult(
                passed=False,
                severity=dg.AssetCheckSeverity.WARN,
                description=f"not compared: slot {slot_name} or the initial snapshot not ready",
                metadata={"compared": False},
            )
        with source_db.connect() as src:
            src.execute("SET TIME ZONE 'UTC'")
            present = {
                r[0]
                for r in src.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = %s AND table_name = %s",
                    source_name,
                )
            }
            shared = [(c, t) for c, t in columns if c in present]
            source_q, mirror_q = mirror_match_queries(
                sql.Identifier(*source_name), target, shared, table.delete.column
            )
            with src.transaction():
                src.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                # Taken in the snapshot the counts come from: every change it shows is before
                # this marker, so a slot past the marker has put them all in Kafka.
                lsn = source_db.mark(src)
                if shared:
                    src_rows, src_hash = src.execute(source_q).fetchone()
                else:
                    src_rows = src.execute(
                        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*source_name))
                    ).fetchone()[0]
                    src_hash = 0
            deadline = time.monotonic() + config.catch_up_wait_s
            while True:
                confirmed = src.execute(
                    "SELECT confirmed_flush_lsn >= %s::pg_lsn, confirmed_flush_lsn::text"
                    " FROM pg_replication_slots WHERE slot_name = %s",
                    (lsn, slot_name),
                ).fetchone()
                if (confirmed and confirmed[0]) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        # After the slot confirmed: the events up to `lsn` are in Kafka now.
        ends = {str(p): o for p, o in kafka.end_offsets([topic])[topic].items()}
        consumed = committed_offsets(context.instance, stream_key)
        behind = {p: e - consumed.get(p, 0) for p, e in ends.items() if consumed.get(p, 0) < e}
        slot_ok = bool(confirmed and confirmed[0])
        meta = {
            "source_lsn": lsn,
            "confirmed_flush_lsn": confirmed[1] if confirmed else "",
            "stream_behind": dg.MetadataValue.json(behind),
            "columns_compared": dg.MetadataValue.json([c for c, _ in shared]),
            "source_rows": int(src_rows),
        }
        if not slot_ok or behind:
            reason = (
                f"slot {slot_name} has not confirmed {lsn}"
                if not slot_ok
                else f"the stream has not consumed {topic} to its end: {behind}"
            )
            return dg.AssetCheckResult(
                passed=False,
                severity=dg.AssetCheckSeverity.WARN,
                description=f"not compared: {reason}",
                metadata={**meta, "compared": False},
            )
        if not live:
            mirror_rows_, mirror_hash = 0, 0
        else:
            with warehouse.connect() as conn:
                conn.execute("SET TIME ZONE 'UTC'")
                if shared:
                    mirror_rows_, mirror_hash = conn.execute(mirror_q).fetchone()
                else:
                    mirror_rows_, mirror_hash = conn.execute(
                        sql.SQL("SELECT count(*), 0 FROM {}").format(target)
                    ).fetchone()
        # An empty source table sends no event, so its mirror may not exist yet: nothing missing.
        missing = sorted(present - {c for c, _ in live}) if live else []
        passed = src_rows == mirror_rows_ and src_hash == mirror_hash and not missing
        return dg.AssetCheckResult(
            passed=passed,
            metadata={
                **meta,
                "compared": True,
                "warehouse_rows": int(mirror_rows_),
                "source_hash": str(src_hash),
                "warehouse_hash": str(mirror_hash),
                "source_columns_missing": dg.MetadataValue.json(missing),
            },
        )

    @dg.asset_check(
        asset=mirror_key,
        name=f"{table.table}_replication_lag",
        automation_condition=FOLLOW_TABLE,
        description=(
            f"WAL the slot {slot_name} has not confirmed (bytes), and the age of the newest "
            f"change loaded into {table.table}."
        ),
    )
    def _lag(
        config: LagConfig, warehouse: PostgresResource, source_db: SourceDatabaseResource
    ) -> dg.AssetCheckResult:
        slot = source_db.slot(slot_name)
        target = warehouse.table(table.table)
        newest_ms = None
        with warehouse.connect() as conn:
            exists = conn.execute(mirror_columns_sql(), (target.as_string(conn),)).fetchall()
            if exists:
                newest_ms = conn.execute(
                    sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(CDC_COLUMNS[4]), target)
                ).fetchone()[0]
        age = round(time.time() - newest_ms / 1000, 1) if newest_ms else None
        lag = slot["lag_bytes"] if slot else -1
        return dg.AssetCheckResult(
            passed=slot is not None and lag <= config.max_lag_bytes,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "slot": slot_name,
                "slot_exists": slot is not None,
                "slot_active": bool(slot and slot["active"]),
                "lag_bytes": lag,
                "newest_change_age_s": dg.MetadataValue.float(age) if age is not None else "",
                "confirmed_flush_lsn": slot["confirmed_flush_lsn"] if slot else "",
            },
        )

    return [_matches, _lag]


class LagConfig(dg.Config):
    max_lag_bytes: int = 64 * 1024 * 1024
    """WAL the slot may hold back before the check warns."""
