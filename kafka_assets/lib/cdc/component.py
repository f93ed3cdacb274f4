"""The CDC component: one YAML file declares a Debezium connector and the tables it mirrors.

`CdcSource` builds, per declared source table: the table as an external asset, its topic, a
stream that parses the change events, a mirror table in the warehouse and its checks; plus the
connector between the source tables and the topics. What cuts across YAML files (the offsets
sensor, the quarantine) is derived in `kafka_assets.definitions`.
"""

from dataclasses import dataclass
from functools import cached_property

import dagster as dg

from kafka_assets.cdc.assets import (
    build_cdc_topic_asset,
    build_connector_asset,
    build_mirror_asset,
    build_mirror_checks,
    changes_stream,
)
from kafka_assets.lib.domain import domain_group
from kafka_assets.spark.assets import PARSING_STREAM_PRIORITY, build_stream_asset
from kafka_assets.spark.streams import StreamSpec
from kafka_assets.spec import AssetOptions, CdcSourceSpec, MirrorSpec
from kafka_assets.warehouse.assets import quarantine_key, table_key


@dataclass(frozen=True)
class CapturedTable:
    """One source table and every key derived from it."""

    spec: MirrorSpec
    source_key: dg.AssetKey
    topic: str
    topic_key: dg.AssetKey
    stream: StreamSpec
    stream_key: dg.AssetKey
    mirror_key: dg.AssetKey


class CdcSource(dg.Component, CdcSourceSpec, dg.Resolvable):
    """A legacy PostgreSQL -> Kafka Connect + Debezium -> streams -> mirror tables."""

    @cached_property
    def connector_key(self) -> dg.AssetKey:
        return dg.AssetKey(["connect", self.connector.name])

    @cached_property
    def captured(self) -> list[CapturedTable]:
        out = []
        for t in self.tables:
            topic = f"{self.connector.topic_prefix}.{self.source.schema_name}.{t.name}"
            stream = changes_stream(f"{t.table}_changes", topic)
            out.append(
                CapturedTable(
                    spec=t,
                    source_key=dg.AssetKey([self.source.database, self.source.schema_name, t.name]),
                    topic=topic,
                    topic_key=dg.AssetKey(["kafka", topic]),
                    stream=stream,
                    stream_key=dg.AssetKey(["spark", stream.name]),
                    mirror_key=table_key(t.table, AssetOptions()),
                )
            )
        return out

    @property
    def quarantine_key(self) -> dg.AssetKey:
        return quarantine_key(self.quarantine.table)

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        group = domain_group(context)
        sources = [
            dg.AssetSpec(
                c.source_key,
                group_name=group,
                kinds={"postgres"},
                description=(
                    f"Source table {self.source.schema_name}.{c.spec.name} in the legacy "
                    f"database {self.source.database} (SOURCE_DSN), read by Debezium."
                ),
            )
            for c in self.captured
        ]
        assets: list = [
            *sources,
            build_connector_asset(self, self.connector_key, [s.key for s in sources], group),
        ]
        checks = []
        for c in self.captured:
            assets.append(build_cdc_topic_asset(c.topic, c.topic_key, self.connector_key, group))
            assets.append(
                build_stream_asset(
                    c.stream,
                    c.stream_key,
                    c.topic_key,
                    group,
                    ["spark", "parquet"],
                    readers=[c.spec.table, self.quarantine.table],
                    priority=PARSING_STREAM_PRIORITY,
                )
            )
            assets.append(build_mirror_asset(c.spec, c.mirror_key, c.stream_key, group))
            checks += build_mirror_checks(self, c.spec, c.mirror_key, c.stream_key, c.topic)
        return dg.Definitions(assets=assets, asset_checks=checks)
