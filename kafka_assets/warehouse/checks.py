"""Checks that hold the warehouse to Kafka: nothing lost, nothing doubled, nothing stale."""

import time
from collections.abc import Iterable, Mapping

import dagster as dg
from psycopg import sql

from kafka_assets.kafka.assets import TOPICS, topic_key
from kafka_assets.kafka.resources import KafkaResource
from kafka_assets.spark.assets import STREAMS, stream_key
from kafka_assets.warehouse.assets import RECONCILED, warehouse_key
from kafka_assets.warehouse.resources import PostgresResource
from kafka_assets.warehouse.tables import LEDGER, ORDERS, TableSpec


def reconcile(
    ledger: Iterable[tuple[str, int, int, int]], end_offsets: Mapping[str, int]
) -> tuple[bool, dict[str, dict[str, int]]]:
    """Compare landed rows (valid + quarantined) with the offsets the stream consumed.

    `ledger` holds (partition, first offset, last offset, rows) per loaded batch and table. For
    every partition the rows must equal the offsets covered (no gap, no duplicate) and reach the
    stream's committed end offset (nothing consumed is missing). Offsets of a non-transactional
    producer are contiguous, which the idempotent producer here is.
    """
    end_offsets = {str(p): int(e) for p, e in end_offsets.items()}
    per: dict[str, dict[str, int]] = {}
    for part, lo, hi, n in ledger:
        agg = per.setdefault(str(part), {"first": lo, "last": hi, "rows": 0})
        agg["first"], agg["last"] = min(agg["first"], lo), max(agg["last"], hi)
        agg["rows"] += n
    ok = True
    for part in set(per) | {str(p) for p, e in end_offsets.items() if e > 0}:
        agg = per.setdefault(part, {"first": 0, "last": -1, "rows": 0})
        agg["covered"] = agg["last"] - agg["first"] + 1
        agg["consumed_end"] = int(end_offsets.get(part, agg["last"] + 1))
        agg["missing"] = agg["consumed_end"] - (agg["last"] + 1)
        if agg["rows"] != agg["covered"] or agg["missing"] != 0:
            ok = False
    return ok, per


def _stream_end_offsets(instance: dg.DagsterInstance, stream: str) -> dict[str, int]:
    event = instance.get_latest_materialization_event(stream_key(stream))
    if event is None or event.asset_materialization is None:
        return {}
    value = event.asset_materialization.metadata.get("end_offsets")
    return {str(k): int(v) for k, v in (value.value if value else {}).items()}


def build_reconciliation_check(
    stream: str, tables: tuple[TableSpec, ...]
) -> dg.AssetChecksDefinition:
    names = [t.name for t in tables]

    @dg.asset_check(
        asset=warehouse_key(tables[0].name),
        name=f"{stream}_reconciled",
        additional_deps=[warehouse_key(n) for n in names[1:]],
        description=(
            f"Rows landed in {' + '.join(names)} equal the messages {stream} consumed from Kafka, "
            "partition by partition."
        ),
    )
    def _check(context: dg.AssetCheckExecutionContext, warehouse: PostgresResource):
        query = sql.SQL(
            "SELECT o.key, (o.value->>0)::bigint, (o.value->>1)::bigint, (o.value->>2)::bigint"
            " FROM {} AS l, jsonb_each(l.offsets) AS o WHERE l.stream = %s"
            " AND l.target_table = ANY(%s)"
        ).format(warehouse.table(LEDGER))
        with warehouse.connect() as conn:
            rows = conn.execute(query, (stream, names)).fetchall()
        ok, per = reconcile(rows, _stream_end_offsets(context.instance, stream))
        return dg.AssetCheckResult(
            passed=ok,
            metadata={
                "partitions": dg.MetadataValue.json(per),
                "rows_landed": sum(p["rows"] for p in per.values()),
                "messages_consumed": sum(p["consumed_end"] - p["first"] for p in per.values()),
            },
        )

    return _check


@dg.asset_check(asset=warehouse_key(ORDERS.name), description="One row per order_id.")
def orders_unique_keys(warehouse: PostgresResource) -> dg.AssetCheckResult:
    with warehouse.connect() as conn:
        total, distinct = conn.execute(
            sql.SQL("SELECT count(*), count(DISTINCT order_id) FROM {}").format(
                warehouse.table(ORDERS.name)
            )
        ).fetchone()
    return dg.AssetCheckResult(
        passed=total == distinct, metadata={"rows": total, "duplicates": total - distinct}
    )


class LagCheckConfig(dg.Config):
    max_lag_messages: int = 0
    max_staleness_s: int = 600
    """A lagging stream still passes while its last run is younger than this."""


def build_topic_lag_check(topic: str) -> dg.AssetChecksDefinition:
    streams = [s.name for s in STREAMS if s.topic == topic]

    @dg.asset_check(
        asset=topic_key(topic),
        name="consumer_lag",
        # Evaluated after the streams in the same run, so it sees the positions they reached.
        additional_deps=[stream_key(s) for s in streams],
        description=(
            f"Messages in {topic} not yet processed by {', '.join(streams)}, and how long ago "
            "they last ran."
        ),
    )
    def _check(
        context: dg.AssetCheckExecutionContext, config: LagCheckConfig, kafka: KafkaResource
    ) -> dg.AssetCheckResult:
        ends = {str(p): o for p, o in kafka.end_offsets([topic])[topic].items()}
        lag: dict[str, int] = {}
        ages: dict[str, float] = {}
        for stream in streams:
            done = _stream_end_offsets(context.instance, stream)
            lag[stream] = sum(max(0, end - done.get(p, 0)) for p, end in ends.items())
            event = context.instance.get_latest_materialization_event(stream_key(stream))
            ages[stream] = round(time.time() - event.timestamp, 1) if event else float("inf")
        worst = max(lag.values(), default=0)
        stale = max(ages.values(), default=0.0)
        passed = worst <= config.max_lag_messages or stale <= config.max_staleness_s
        return dg.AssetCheckResult(
            passed=passed,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "lag_messages": dg.MetadataValue.json(lag),
                "seconds_since_processed": dg.MetadataValue.json(
                    {k: (v if v != float("inf") else None) for k, v in ages.items()}
                ),
                "end_offsets": dg.MetadataValue.json(ends),
            },
        )

    return _check


reconciliation_checks = [build_reconciliation_check(s, t) for s, t in RECONCILED.items()]
topic_lag_checks = [build_topic_lag_check(t.name) for t in TOPICS]
warehouse_checks = [*reconciliation_checks, orders_unique_keys]
