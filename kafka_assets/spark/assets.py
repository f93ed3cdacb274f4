"""Spark Structured Streaming outputs as assets: one availableNow query per materialization."""

import dagster as dg
from dagster_pyspark import LazyPySparkResource

from kafka_assets.kafka.assets import topic_key
from kafka_assets.kafka.resources import KafkaResource
from kafka_assets.spark import transforms
from kafka_assets.spark.resources import StreamingSettings
from kafka_assets.spark.streams import StreamRun, StreamSpec, run_available_now

STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec(
        "orders_events",
        "orders",
        transforms.order_events,
        "append",
        "Every orders message, parsed against an explicit schema; malformed ones carry an error.",
    ),
    StreamSpec(
        "revenue_per_minute",
        "orders",
        transforms.revenue_per_minute,
        "update",
        "Paid revenue per one-minute event-time window and currency, watermarked.",
    ),
    StreamSpec(
        "page_views_events",
        "page_views",
        transforms.page_view_events,
        "append",
        "Every page_views message, parsed; malformed ones carry an error.",
    ),
    StreamSpec(
        "page_view_counts",
        "page_views",
        transforms.page_view_counts,
        "update",
        "Page views and sessions per one-minute event-time window and page, watermarked.",
    ),
)


def stream_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["spark", name])


def _ranges(run: StreamRun) -> dict[str, str]:
    return {
        p: f"{run.start_offsets.get(p, '?')}-{end}" for p, end in sorted(run.end_offsets.items())
    }


def stream_metadata(run: StreamRun, committed: dict[str, int]) -> dict[str, object]:
    return {
        "input_rows": run.input_rows,
        "batches": len([b for b in run.batches if b["input_rows"]]),
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
    }


def previous_end_offsets(context: dg.AssetExecutionContext) -> dict[str, int]:
    event = context.instance.get_latest_materialization_event(context.asset_key)
    if event is None or event.asset_materialization is None:
        return {}
    value = event.asset_materialization.metadata.get("end_offsets")
    return dict(value.value) if value is not None else {}


def build_stream_asset(spec: StreamSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=stream_key(spec.name),
        group_name="spark",
        kinds={"spark", "parquet"},
        deps=[topic_key(spec.topic)],
        io_manager_key="staging_io_manager",
        description=spec.description,
    )
    def _stream(
        context: dg.AssetExecutionContext,
        pyspark: LazyPySparkResource,
        kafka: KafkaResource,
        streaming: StreamingSettings,
    ) -> dg.Output[StreamRun]:
        run = run_available_now(
            pyspark.spark_session,
            spec,
            kafka.spark_options(),
            streaming.checkpoint_path(spec.name),
            streaming.staging_path(spec.name),
            streaming.max_offsets_per_trigger,
        )
        # The position after this run: what it consumed, or where the last run left off.
        committed = {**previous_end_offsets(context), **run.end_offsets}
        context.log.info(
            f"{spec.name}: {run.input_rows} rows from {spec.topic} in {len(run.batches)} "
            f"batches, ranges {_ranges(run)}"
        )
        return dg.Output(run, metadata=stream_metadata(run, committed))

    return _stream


stream_assets = [build_stream_asset(spec) for spec in STREAMS]
