"""Checks that hold the warehouse to Kafka: nothing lost, nothing doubled, nothing stale."""

import time
from collections.abc import Iterable, Mapping, Sequence

import dagster as dg
from psycopg import sql

from kafka_assets.kafka.resources import KafkaResource
from kafka_assets.spark.assets import committed_offsets, committed_offsets_many
from kafka_assets.spark.resources import StreamingSettings
from kafka_assets.spark.streams import acknowledged_loss
from kafka_assets.warehouse.resources import PostgresResource
from kafka_assets.warehouse.tables import LEDGER, Table

# A table's checks run whenever the table is loaded, also in runs the automation sensor launches
# for the table alone: otherwise the latest load would show its checks as "not evaluated".
FOLLOW_TABLE = dg.AutomationCondition.eager()


def reconcile(
    ledger: Iterable[tuple[str, int, str, int, int, int]],
    end_offsets: Mapping[str, int],
    lost: Mapping[str, Iterable[tuple[int, int]]] | None = None,
) -> tuple[bool, dict[str, dict]]:
    """Compare landed rows (valid + quarantined) with the offsets the stream consumed.

    `ledger` holds (query id, batch id, partition, first offset, last offset, rows) per loaded
    batch and table. Per partition:
    - each batch's rows across the tables equal its offset range (nothing doubled or dropped
      inside a batch; offsets of a non-transactional producer are contiguous);
    - the batches' ranges leave no gap, except ranges `lost` records as deleted by retention
      and acknowledged by an opt-in run. Ranges may overlap: that is a replay, idempotent by
      position in the tables;
    - they reach the stream's committed end offset (nothing consumed is missing).
    """
    end_offsets = {str(p): int(e) for p, e in end_offsets.items()}
    batches: dict[str, dict[tuple[str, int], list[int]]] = {}
    for query, batch, part, lo, hi, n in ledger:
        agg = batches.setdefault(str(part), {}).setdefault((query, batch), [lo, hi, 0])
        agg[0], agg[1], agg[2] = min(agg[0], lo), max(agg[1], hi), agg[2] + n
    ok = True
    per: dict[str, dict] = {}
    for part in set(batches) | {p for p, e in end_offsets.items() if e > 0}:
        spans = sorted(batches.get(part, {}).values())
        wrong = [f"{lo}-{hi}: {n} rows" for lo, hi, n in spans if n != hi - lo + 1]
        acknowledged = sorted(tuple(r) for r in (lost or {}).get(part, ()))
        intervals = sorted([(lo, hi) for lo, hi, _ in spans] + acknowledged)
        gaps, reach = [], None
        for lo, hi in intervals:
            if reach is not None and lo > reach + 1:
                gaps.append(f"{reach + 1}-{lo - 1}")
            reach = hi if reach is None else max(reach, hi)
        first = spans[0][0] if spans else 0
        last = max((hi for _, hi, _ in spans), default=-1)
        consumed_end = end_offsets.get(part, last + 1)
        per[part] = {
            "first": first,
            "last": last,
            "rows": sum(n for _, _, n in spans),
            "covered": last - first + 1,
            "consumed_end": consumed_end,
            "missing": consumed_end - (max(last, reach if reach is not None else -1) + 1),
            "batches": len(spans),
        }
        if wrong:
            per[part]["batches_miscounted"] = wrong
        if gaps:
            per[part]["gaps"] = gaps
        if acknowledged:
            per[part]["acknowledged_lost"] = [f"{a}-{b}" for a, b in acknowledged]
        if wrong or gaps or per[part]["missing"] != 0:
            ok = False
    return ok, per


def build_reconciliation_check(
    stream: str,
    stream_key: dg.AssetKey,
    tables: Sequence[tuple[dg.AssetKey, Table]],
) -> dg.AssetChecksDefinition:
    """Valid rows in the first table plus quarantined rows equal what `stream` consumed."""
    names = [t.name for _, t in tables]

    @dg.asset_check(
        asset=tables[0][0],
        name=f"{stream}_reconciled",
        additional_deps=[k for k, _ in tables[1:]],
        automation_condition=FOLLOW_TABLE,
        description=(
            f"Rows landed in {' + '.join(names)} equal the messages {stream} consumed from Kafka, "
            "partition by partition."
        ),
    )
    def _check(
        context: dg.AssetCheckExecutionContext,
        warehouse: PostgresResource,
        streaming: StreamingSettings,
    ):
        query = sql.SQL(
            "SELECT l.query_id, l.batch_id, o.key, (o.value->>0)::bigint,"
            " (o.value->>1)::bigint, (o.value->>2)::bigint"
            " FROM {} AS l, jsonb_each(l.offsets) AS o WHERE l.stream = %s"
            " AND l.target_table = ANY(%s)"
        ).format(warehouse.table(LEDGER))
        with warehouse.connect() as conn:
            rows = conn.execute(query, (stream, names)).fetchall()
        lost = acknowledged_loss(streaming.staging_path(stream))
        ok, per = reconcile(rows, committed_offsets(context.instance, stream_key), lost)
        return dg.AssetCheckResult(
            passed=ok,
            metadata={
                "partitions": dg.MetadataValue.json(per),
                "rows_landed": sum(p["rows"] for p in per.values()),
                "messages_consumed": sum(p["consumed_end"] - p["first"] for p in per.values()),
            },
        )

    return _check


def build_unique_keys_check(key: dg.AssetKey, table: Table) -> dg.AssetChecksDefinition:
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in table.primary_key)

    @dg.asset_check(
        asset=key,
        name=f"{table.name}_unique_keys",
        automation_condition=FOLLOW_TABLE,
        description=f"One row per {', '.join(table.primary_key)}.",
    )
    def _check(warehouse: PostgresResource) -> dg.AssetCheckResult:
        with warehouse.connect() as conn:
            total, distinct = conn.execute(
                sql.SQL("SELECT count(*), count(DISTINCT ({})) FROM {}").format(
                    columns, warehouse.table(table.name)
                )
            ).fetchone()
        return dg.AssetCheckResult(
            passed=total == distinct, metadata={"rows": total, "duplicates": total - distinct}
        )

    return _check


class LagCheckConfig(dg.Config):
    max_lag_messages: int = 0
    max_staleness_s: int = 600
    """A lagging stream still passes while its last run is younger than this."""
    retention_warn_share: float = 0.5
    """Warn when the oldest unread message is older than this share of the topic's retention.ms:
    retention would delete it before it is read if nothing changes."""


def build_topic_lag_check(
    topic: str, topic_key: dg.AssetKey, streams: Mapping[str, dg.AssetKey]
) -> dg.AssetChecksDefinition:
    """`streams` maps each stream reading `topic` to its asset key."""

    @dg.asset_check(
        asset=topic_key,
        name="consumer_lag",
        # Evaluated after the streams in the same run, so it sees the positions they reached.
        additional_deps=list(streams.values()),
        description=(
            f"Messages in {topic} not yet processed by {', '.join(streams)}, and how long ago "
            "they last ran."
        ),
    )
    def _check(
        context: dg.AssetCheckExecutionContext, config: LagCheckConfig, kafka: KafkaResource
    ) -> dg.AssetCheckResult:
        ends = {str(p): o for p, o in kafka.end_offsets([topic])[topic].items()}
        done = committed_offsets_many(context.instance, streams.values())
        events = context.instance.get_latest_materialization_events(list(streams.values()))
        lag: dict[str, int] = {}
        ages: dict[str, float | None] = {}
        for stream, key in streams.items():
            position = done.get(key, {})
            lag[stream] = sum(max(0, end - position.get(p, 0)) for p, end in ends.items())
            event = events.get(key)
            ages[stream] = round(time.time() - event.timestamp, 1) if event else None
        worst = max(lag.values(), default=0)
        stale = max((a if a is not None else float("inf") for a in ages.values()), default=0.0)
        passed = worst <= config.max_lag_messages or stale <= config.max_staleness_s
        # The oldest message any stream has not read yet, against the topic's retention.
        oldest = {}
        for position in done.values():
            for p, end in ends.items():
                at = position.get(p, 0)
                if at < end:
                    oldest[int(p)] = min(oldest.get(int(p), at), at)
        stamps = kafka.timestamps_at(topic, oldest) if oldest and worst else {}
        state = kafka.describe_topic(topic)
        retention_ms = int((state.config if state else {}).get("retention.ms", "-1") or -1)
        oldest_age_s = round(time.time() - min(stamps.values()) / 1000, 1) if stamps else 0.0
        near_retention = retention_ms > 0 and (
            oldest_age_s * 1000 > config.retention_warn_share * retention_ms
        )
        return dg.AssetCheckResult(
            passed=passed and not near_retention,
            severity=dg.AssetCheckSeverity.WARN,
            description=(
                f"the oldest unread message is {oldest_age_s:.0f}s old, over "
                f"{config.retention_warn_share:.0%} of retention.ms={retention_ms}: it will be "
                "deleted before it is read unless the streams catch up"
                if near_retention
                else None
            ),
            metadata={
                "lag_messages": dg.MetadataValue.json(lag),
                "max_lag_messages": dg.MetadataValue.int(worst),
                "seconds_since_processed": dg.MetadataValue.json(ages),
                "end_offsets": dg.MetadataValue.json(ends),
                "oldest_unread_age_s": dg.MetadataValue.float(oldest_age_s),
                "retention_ms": dg.MetadataValue.int(retention_ms),
            },
        )

    return _check


def build_retention_check(
    topic: str, topic_key: dg.AssetKey, streams: Mapping[str, dg.AssetKey]
) -> dg.AssetChecksDefinition:
    """Fails, naming each range, when retention deleted offsets a stream had not read."""

    @dg.asset_check(
        asset=topic_key,
        name="unread_not_deleted",
        additional_deps=list(streams.values()),
        description=(
            f"Every message of {topic} still unread by {', '.join(streams)} is still in Kafka: "
            "retention has deleted nothing before it was read."
        ),
    )
    def _check(context: dg.AssetCheckExecutionContext, kafka: KafkaResource) -> dg.AssetCheckResult:
        log_start = {str(p): o for p, o in kafka.start_offsets([topic])[topic].items()}
        done = committed_offsets_many(context.instance, streams.values())
        lost = {}
        for stream, key in streams.items():
            for p, at in sorted(done.get(key, {}).items()):
                if p in log_start and at < log_start[p]:
                    lost[f"{stream} partition {p}"] = f"{at}-{log_start[p] - 1}"
        return dg.AssetCheckResult(
            passed=not lost,
            description=(
                f"retention deleted unread offsets of {topic}: "
                + ", ".join(f"{k}: {v}" for k, v in lost.items())
                if lost
                else None
            ),
            metadata={
                "lost_ranges": dg.MetadataValue.json(lost),
                "log_start_offsets": dg.MetadataValue.json(log_start),
            },
        )

    return _check
