"""The pipeline component: one YAML file declares a topic and everything downstream of it.

`KafkaPipeline` turns the declaration into assets (topic, streams, tables) and checks. What cuts
across pipelines (the shared quarantine table, the offsets sensor, the automation sensor) is
derived from all declared pipelines in `kafka_assets.definitions`.
"""

import textwrap
from dataclasses import dataclass
from functools import cached_property

import dagster as dg
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from kafka_assets.kafka.producer import load_callable
from kafka_assets.kafka.topics import build_topic_asset, topic_key
from kafka_assets.lib.domain import domain_group
from kafka_assets.lib.producer.component import Producer
from kafka_assets.spark.assets import (
    AGGREGATE_PRIORITY,
    PARSING_STREAM_PRIORITY,
    build_stream_asset,
)
from kafka_assets.spark.parsing import aggregate, may_pass, parse_messages
from kafka_assets.spark.streams import StreamSpec
from kafka_assets.spec import AssetOptions, PipelineSpec, TableSpec
from kafka_assets.warehouse.assets import (
    TABLE_PRIORITY,
    RowMapper,
    build_table_asset,
    partial_totals,
    quarantine_key,
    table_key,
    valid_rows,
)
from kafka_assets.warehouse.checks import (
    build_reconciliation_check,
    build_retention_check,
    build_topic_lag_check,
    build_unique_keys_check,
)
from kafka_assets.warehouse.tables import Table, quarantine_table, table_for


@dataclass(frozen=True)
class StreamPlan:
    name: str
    key: dg.AssetKey
    spec: StreamSpec
    options: AssetOptions


@dataclass(frozen=True)
class TablePlan:
    spec: TableSpec
    table: Table
    key: dg.AssetKey
    stream: StreamPlan
    """The stream whose staged batches the table loads."""


def _stream_key(name: str, options: AssetOptions) -> dg.AssetKey:
    return (
        dg.AssetKey.from_user_string(options.key) if options.key else dg.AssetKey(["spark", name])
    )


class PipelineScaffolder(dg.Scaffolder):
    """`dg scaffold defs kafka_assets.lib.KafkaPipeline <path>`: a commented pipeline to edit."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        topic = request.target_path.name
        request.target_path.mkdir(parents=True, exist_ok=True)
        (request.target_path / "defs.yaml").write_text(
            SCAFFOLD.format(type=request.type_name, topic=topic)
        )


SCAFFOLD = textwrap.dedent(
    """\
    # One Kafka topic and everything downstream of it. `dg check defs` validates this file.
    type: {type}
    attributes:
      topic:
        name: {topic}
        partitions: 3            # a minimum: partitions added outside are reported, not fatal
        replication_factor: 1
        retention_ms: 604800000
        cleanup_policy: delete
      format:
        type: json
        key: id                  # the field the producer uses as message key
        event_time: event_time   # a timestamp field, for windows and `latest` ordering
        fields:
          id: {{type: string, required: true}}
          amount: {{type: "decimal(14,2)", required: true}}
          status: {{type: string, required: true, allowed: [new, done]}}
          event_time: {{type: timestamp, required: true}}
      tables:
        - name: {topic}_latest      # upsert by key; a late event never overwrites a newer one
          mode: latest
          key: [id]
        - name: {topic}_events      # one row per valid message, keyed by Kafka position
          mode: append
        - name: {topic}_per_minute  # event-time windows, totals added up batch by batch
          mode: aggregate
          window: {{size: 1 minute, watermark: 10 minutes}}
          group_by: [status]
          measures:
            - {{name: amount, agg: sum, column: amount}}
            - {{name: events, agg: count}}
      quarantine:
        table: quarantine        # shared: malformed messages land here with position and reason
    """
)


@dg.scaffold_with(PipelineScaffolder)
class KafkaPipeline(dg.Component, PipelineSpec, dg.Resolvable):
    """A Kafka topic, a Spark stream that parses it, and the PostgreSQL tables it feeds."""

    @cached_property
    def topic_key(self) -> dg.AssetKey:
        return topic_key(self.topic)

    @cached_property
    def events(self) -> StreamPlan:
        """Every message of the topic parsed against the declared fields, valid or not."""
        name = f"{self.topic.name}_events"
        fmt = self.format
        spec = StreamSpec(
            name,
            self.topic.name,
            lambda raw: parse_messages(raw, fmt),
            "append",
            self.stream.description
            or f"Every {self.topic.name} message, parsed; malformed ones carry an error.",
        )
        return StreamPlan(name, _stream_key(name, self.stream), spec, self.stream)

    @cached_property
    def table_plans(self) -> list[TablePlan]:
        plans = []
        for spec in self.tables:
            table = table_for(self, spec)
            own_stream = spec.mode == "aggregate" and not spec.folds
            stream = self._aggregate_stream(spec) if own_stream else self.events
            plans.append(TablePlan(spec, table, table_key(spec.name, spec.asset), stream))
        return plans

    @property
    def streams(self) -> list[StreamPlan]:
        return [self.events, *(t.stream for t in self.table_plans if t.stream != self.events)]

    def readers(self, stream: StreamPlan) -> list[str]:
        """The tables that load a stream's staged batches (the parsing stream feeds quarantine)."""
        tables = [t.table.name for t in self.table_plans if t.stream == stream]
        return tables + ([self.quarantine.table] if stream == self.events else [])

    def mapper(self, plan: TablePlan) -> RowMapper | None:
        """How the table's stream batches become its rows (None: the stream shaped them)."""
        if plan.spec.mode != "aggregate":
            return valid_rows(plan.table, plan.spec.where, self._custom(plan.spec))
        if plan.spec.folds:
            return partial_totals(plan.spec, self.format, self._custom(plan.spec))
        return None

    @property
    def quarantine_key(self) -> dg.AssetKey:
        return quarantine_key(self.quarantine.table)

    @staticmethod
    def _custom(spec: TableSpec):
        """The table's custom transform, imported now so a wrong path fails at load time."""
        return load_callable(spec.transform.function, "transform") if spec.transform else None

    def _aggregate_stream(self, spec: TableSpec) -> StreamPlan:
        fmt = self.format
        custom = self._custom(spec)

        def shape(raw: DataFrame) -> DataFrame:
            if spec.where and custom is None:
                raw = may_pass(raw, fmt, spec.where)  # parse in full only what may be kept
            events = parse_messages(raw, fmt)
            if custom is not None:
                events = custom(events.where(F.col("error").isNull()))
            return aggregate(events, spec, fmt)

        stream_spec = StreamSpec(
            spec.name,
            self.topic.name,
            shape,
            "update",
            spec.stream.description
            or f"{spec.name}: windowed aggregates of {self.topic.name}, watermarked.",
        )
        return StreamPlan(spec.name, _stream_key(spec.name, spec.stream), stream_spec, spec.stream)

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        group = domain_group(context)
        # Producers declared anywhere in the project that write to this topic: drawn upstream.
        producers = [
            p.key
            for p in context.component_tree.get_all_components(of_type=Producer)
            if self.topic.name in p.topics
        ]
        assets: list[dg.AssetsDefinition] = [build_topic_asset(self.topic, group, producers)]
        for stream in self.streams:
            assets.append(
                build_stream_asset(
                    stream.spec,
                    stream.key,
                    self.topic_key,
                    stream.options.group or group,
                    stream.options.kinds or ["spark", "parquet"],
                    readers=self.readers(stream),
                    priority=PARSING_STREAM_PRIORITY
                    if stream == self.events
                    else AGGREGATE_PRIORITY,
                )
            )
        readers = {s.name: s.key for s in self.streams}
        checks = [
            build_topic_lag_check(self.topic.name, self.topic_key, readers),
            build_retention_check(self.topic.name, self.topic_key, readers),
        ]
        for plan in self.table_plans:
            assets.append(
                build_table_asset(
                    plan.table,
                    plan.key,
                    {plan.stream.name: plan.stream.key},
                    {plan.stream.name: self.mapper(plan)},
                    plan.spec.asset,
                    plan.spec.freshness,
                    group,
                    priority=AGGREGATE_PRIORITY if plan.spec.folds else TABLE_PRIORITY,
                )
            )
            if plan.spec.mode == "latest":
                checks.append(build_unique_keys_check(plan.key, plan.table))
        complete = [
            p
            for p in self.table_plans
            if p.spec.mode != "aggregate" and not p.spec.where and not p.spec.transform
        ]
        if complete:
            # Every valid message lands in this table and every invalid one in quarantine, so
            # together they must account for each consumed offset exactly once.
            checks.append(
                build_reconciliation_check(
                    self.events.name,
                    self.events.key,
                    [
                        (complete[0].key, complete[0].table),
                        (self.quarantine_key, quarantine_table(self.quarantine.table)),
                    ],
                )
            )
        # The launchpad for reprocessing: each stream's config takes a replay point and a reason.
        replay = dg.define_asset_job(
            f"replay_{self.topic.name}",
            selection=dg.AssetSelection.assets(*(s.key for s in self.streams)).downstream(),
            description=(
                f"Reprocess {self.topic.name} from an offset or a timestamp: set "
                "replay_from_offsets or replay_from_timestamp (and a reason) in a stream's "
                "config. Aggregate streams are rebuilt from the log start; totals kept in "
                "the warehouse skip the messages they already counted."
            ),
        )
        return dg.Definitions(assets=assets, asset_checks=checks, jobs=[replay])
