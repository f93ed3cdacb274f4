"""Spark Structured Streaming outputs as assets: one availableNow query per materialization."""

from collections.abc import Iterable
from dataclasses import replace

import dagster as dg

from kafka_assets.kafka.resources import KafkaResource, KafkaUnavailable
from kafka_assets.spark.replay import DataLost, StreamRunConfig, plan_start
from kafka_assets.spark.resources import SparkResource, StreamingSettings
from kafka_assets.spark.streams import (
    StreamRun,
    StreamSpec,
    checkpoint_lock,
    checkpoint_position,
    record_loss,
    run_available_now,
    set_aside,
)

STREAM_METADATA = "kafka_assets/stream"
"""Definition metadata naming a stream asset's stream: its checkpoint and staging directory."""
PRIORITY_TAG = "dagster/priority"
"""Step order within a run: the in-process executor runs the ready step of highest priority."""
PARSING_STREAM_PRIORITY = 1
"""Above the aggregates: a run stages the rows its tables load before it computes totals."""
AGGREGATE_PRIORITY = 0
"""An aggregate stream, and a table adding up totals: after every row is queryable."""
READERS_METADATA = "kafka_assets/readers"
"""Definition metadata listing the warehouse tables that load a stream's staged batches: once
all of them have a batch in the ledger, the batch is deleted."""


def committed_offsets(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, int]:
    """Where a stream's checkpoint stood after its latest materialization: {partition: offset}.

    The one reader of a stream's position, for the stream itself, its checks and the sensor.
    """
    return committed_offsets_many(instance, [key]).get(key, {})


def committed_offsets_many(
    instance: dg.DagsterInstance, keys: Iterable[dg.AssetKey]
) -> dict[dg.AssetKey, dict[str, int]]:
    """The same for many streams at once, in one event-log query."""
    found: dict[dg.AssetKey, dict[str, int]] = {}
    for key, event in instance.get_latest_materialization_events(list(keys)).items():
        if event is None or event.asset_materialization is None:
            continue
        value = event.asset_materialization.metadata.get("end_offsets")
        found[key] = {str(p): int(o) for p, o in (value.value if value else {}).items()}
    return found


def _ranges(run: StreamRun) -> dict[str, str]:
    return {
        p: f"{run.start_offsets.get(p, '?')}-{end}" for p, end in sorted(run.end_offsets.items())
    }


def stream_metadata(run: StreamRun, committed: dict[str, int]) -> dict[str, object]:
    return {
        "input_rows": run.input_rows,
        "batches": len(run.batches),
        "batch_details": dg.MetadataValue.json(run.batches),
        "start_offsets": dg.MetadataValue.json(run.start_offsets),
        "end_offsets": dg.MetadataValue.json(committed),
        "consumed_ranges": dg.MetadataValue.json(_ranges(run)),
        "duration_s": round(run.duration_s, 3),
        "rows_per_s": run.rows_per_s,
        "watermark": run.watermark or "",
        "dropped_by_watermark": run.dropped_by_watermark,
        "query_id": run.query_id,
        "checkpoint": run.checkpoint_path,
        "staging": run.staging_path,
        "staged_by": run.writer,
    }


def build_stream_asset(
    spec: StreamSpec,
    key: dg.AssetKey,
    topic_key: dg.AssetKey,
    group: str,
    kinds: Iterable[str],
    readers: Iterable[str] = (),
    priority: int = 0,
) -> dg.AssetsDefinition:
    @dg.asset(
        key=key,
        group_name=group,
        op_tags={PRIORITY_TAG: str(priority)},
        kinds=set(kinds),
        deps=[topic_key],
        io_manager_key="staging_io_manager",
        description=spec.description,
        metadata={
            STREAM_METADATA: spec.name,
            READERS_METADATA: sorted(set(readers)),
            "kafka/topic": spec.topic,
        },
    )
    def _stream(
        context: dg.AssetExecutionContext,
        config: StreamRunConfig,
        pyspark: SparkResource,
        kafka: KafkaResource,
        streaming: StreamingSettings,
    ) -> dg.Output[StreamRun]:
        checkpoint = streaming.checkpoint_path(spec.name)
        timeout = streaming.lock_timeout_s
        try:
            with checkpoint_lock(checkpoint, spec.name, timeout, context.log) as waited:
                plan = plan_start(
                    config,
                    stream=spec.name,
                    topic=spec.topic,
                    output_mode=spec.output_mode,
                    position=checkpoint_position(checkpoint, spec.topic),
                    kafka=kafka,
                )
                set_aside_to = set_aside(checkpoint, "replaced") if plan.new_query else None
                if plan.lost:
                    context.log.warning(f"{spec.name}: continuing past lost offsets {plan.lost}")
                run_spec = spec
                if spec.prepare is not None:
                    # Parsing decided at run time, e.g. from the schema in the newest messages.
                    run_spec = replace(spec, transform=spec.prepare(kafka.client_config()))
                run = run_available_now(
                    pyspark.spark_session,
                    run_spec,
                    kafka.spark_options(),
                    checkpoint,
                    streaming.staging_path(spec.name),
                    streaming.max_offsets(run_spec),
                    starting_offsets=plan.starting_offsets,
                    fail_on_data_loss=plan.fail_on_data_loss,
                )
                # Read while still holding the checkpoint: no other run can move it meanwhile.
                position = checkpoint_position(checkpoint, spec.topic)
                ends = kafka.end_offsets([spec.topic])[spec.topic]
        except (DataLost, KafkaUnavailable) as exc:
            raise dg.Failure(description=str(exc)) from exc
        # A new query's first batch has no start in Spark's progress: it began where planned.
        for p in run.end_offsets:
            run.start_offsets.setdefault(p, plan.start_offsets.get(p, 0))
        # The position after this run: what it consumed, or where the last run left off.
        committed = position or {**committed_offsets(context.instance, key), **run.end_offsets}
        context.log.info(
            f"{spec.name}: {run.input_rows} rows from {spec.topic} in {len(run.batches)} "
            f"batches, ranges {_ranges(run)}"
        )
        # What is still unread right after the run: a number the UI plots across runs.
        lag = sum(max(0, end - committed.get(str(p), 0)) for p, end in ends.items())
        extra: dict[str, object] = {}
        if plan.replay is not None:
            extra["replay"] = dg.MetadataValue.json(
                {**plan.replay, "previous_checkpoint": set_aside_to}
            )
        if plan.lost:
            record_loss(streaming.staging_path(spec.name), context.run.run_id, plan.lost)
            extra["data_lost"] = dg.MetadataValue.json(
                {p: f"{a}-{b}" for p, (a, b) in plan.lost.items()}
            )
        return dg.Output(
            run,
            metadata={
                **stream_metadata(run, committed),
                "lag_messages": dg.MetadataValue.int(lag),
                "waited_for_other_run_s": round(waited, 3),
                # Which Spark ran the query: local mode, a standalone cluster or Spark Connect.
                "spark_master": pyspark.master,
                **extra,
            },
        )

    return _stream
