"""The one entry point: the declared pipelines, plus what cuts across them.

Each pipeline, and each CDC source, is a `defs.yaml` under `kafka_assets/defs/` (see
`kafka_assets.lib`). This module loads that folder and derives, from the components it finds, the
pieces no single YAML owns: the shared quarantine tables, the offsets sensor (over every topic a
stream reads, Debezium's included), the automation sensor and the resources. Adding a pipeline
needs no edit here.

Environment-specific settings arrive only through `dg.EnvVar` (see `.env.example`); nothing here
reads the environment or opens a connection when the module is imported.
"""

import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import dagster as dg

from kafka_assets.cdc.connect import KafkaConnectResource, SourceDatabaseResource
from kafka_assets.kafka.resources import KafkaResource
from kafka_assets.kafka.sensors import WatchedTopic, build_offsets_sensor
from kafka_assets.lib import CdcSource, KafkaPipeline
from kafka_assets.spark.resources import SparkResource, StreamingSettings
from kafka_assets.spark.staging import StagingIOManager
from kafka_assets.warehouse.assets import build_quarantine_asset
from kafka_assets.warehouse.io_manager import PostgresIOManager
from kafka_assets.warehouse.resources import PostgresResource
from kafka_assets.warehouse.tables import quarantine_table


class PipelineConflict(ValueError):
    """Two declared pipelines claim the same topic, stream or table."""


@dataclass(frozen=True)
class Feed:
    """A topic some streams read, as the offsets sensor and the quarantine need to know it."""

    topic: str
    topic_key: dg.AssetKey
    streams: tuple[dg.AssetKey, ...]
    quarantine: str
    """The quarantine table of the stream that parses the topic's messages."""
    parser: dg.AssetKey
    """That stream: the one whose rejects land in `quarantine`."""


def feeds(pipelines: list[KafkaPipeline], cdc: list[CdcSource]) -> list[Feed]:
    out = [
        Feed(
            p.topic.name,
            p.topic_key,
            tuple(s.key for s in p.streams),
            p.quarantine.table,
            p.events.key,
        )
        for p in pipelines
    ]
    for source in cdc:
        out += [
            Feed(c.topic, c.topic_key, (c.stream_key,), source.quarantine.table, c.stream_key)
            for c in source.captured
        ]
    return out


def load_pipelines(
    defs_module: ModuleType,
) -> tuple[dg.Definitions, list[KafkaPipeline], list[CdcSource]]:
    """Every component under `defs_module`, built, and the pipelines and CDC sources among them."""
    package_dir = Path(defs_module.__file__).resolve().parent
    project_root = package_dir.parents[len(defs_module.__name__.split(".")) - 1]
    with warnings.catch_warnings():
        # Loading components notes, per YAML file, that their APIs are beta or preview: known,
        # chosen, and noise in every run's log.
        warnings.simplefilter("ignore", dg.BetaWarning)
        warnings.simplefilter("ignore", dg.PreviewWarning)
        tree = dg.ComponentTree.from_module(defs_module=defs_module, project_root=project_root)
        return (
            tree.build_defs(),
            tree.get_all_components(of_type=KafkaPipeline),
            tree.get_all_components(of_type=CdcSource),
        )


def check_unique(pipelines: list[KafkaPipeline], cdc: list[CdcSource] = ()) -> None:
    """Names that must be unique across all YAML files, with both claimants in the message."""
    owners: dict[tuple[str, str], str] = {}
    declared: list[tuple[str, list[tuple[str, str]], str]] = []
    for p in pipelines:
        claims = [("topic", p.topic.name)]
        claims += [("stream", s.name) for s in p.streams]
        claims += [("table", t.name) for t in p.tables]
        declared.append((f"topic {p.topic.name!r}", claims, p.quarantine.table))
    for source in cdc:
        claims = [("connector", source.connector.name)]
        claims += [("topic", c.topic) for c in source.captured]
        claims += [("stream", c.stream.name) for c in source.captured]
        claims += [("table", c.spec.table) for c in source.captured]
        owner = f"CDC connector {source.connector.name!r}"
        declared.append((owner, claims, source.quarantine.table))
    for owner, claims, _ in declared:
        for claim in claims:
            other = owners.setdefault(claim, owner)
            if other != owner:
                raise PipelineConflict(
                    f"{claim[0]} {claim[1]!r} is declared by the pipelines of {other} and of "
                    f"{owner}; rename one of them"
                )
    for owner, _, quarantine in declared:
        other = owners.get(("table", quarantine))
        if other is not None:
            raise PipelineConflict(
                f"quarantine table {quarantine!r} of {owner} is also a table of the pipeline of "
                f"{other}"
            )


def quarantine_assets(all_feeds: list[Feed], project: dg.Definitions) -> list[dg.AssetsDefinition]:
    """One table per quarantine name, fed by the parsing stream of every feed naming it, in
    their group when they share one."""
    by_name: dict[str, list[Feed]] = defaultdict(list)
    for f in all_feeds:
        by_name[f.quarantine].append(f)
    group_of = {
        k: g
        for a in project.assets or ()
        if isinstance(a, dg.AssetsDefinition)
        for k, g in a.group_names_by_key.items()
    }
    out = []
    for name, members in sorted(by_name.items()):
        groups = {group_of.get(f.parser, "warehouse") for f in members}
        group = groups.pop() if len(groups) == 1 else "quarantine"
        out.append(
            build_quarantine_asset(quarantine_table(name), [f.parser for f in members], group)
        )
    return out


def sensors(all_feeds: list[Feed], graph) -> list[dg.SensorDefinition]:
    """The offsets sensor over every topic a stream reads (declared pipelines' and Debezium's),
    and the automation sensor, both RUNNING."""
    watched = {}
    for f in all_feeds:
        streams = list(f.streams)
        # The topic too: its page then shows the end offsets each run started from.
        targets = dg.AssetSelection.assets(f.topic_key, *streams).downstream().resolve(graph)
        checks = {c for c in graph.asset_check_keys if c.asset_key in targets}
        watched[f.topic] = WatchedTopic(
            key=f.topic_key,
            targets=sorted(targets, key=str),
            checks=sorted(checks, key=str),
            streams=streams,
        )
    automation = dg.AutomationConditionSensorDefinition(
        "warehouse_automation",
        target=dg.AssetSelection.all(),
        # The default automation sensor loads STOPPED; this one runs as soon as the daemon does.
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=10,
        description="Brings tables up to date after their streams are materialized by hand.",
    )
    return [build_offsets_sensor(watched), automation]


def resources() -> dict[str, object]:
    # local[N], spark://host:port (standalone) or sc://host:port (Spark Connect), read at run time.
    pyspark = SparkResource(master=dg.EnvVar("SPARK_MASTER"))
    streaming = StreamingSettings(
        checkpoint_base=dg.EnvVar("SPARK_CHECKPOINT_BASE"),
        staging_base=dg.EnvVar("SPARK_STAGING_BASE"),
    )
    warehouse = PostgresResource(
        dsn=dg.EnvVar("WAREHOUSE_DSN"), schema_name=dg.EnvVar("WAREHOUSE_SCHEMA")
    )
    return {
        "kafka": KafkaResource(
            bootstrap_servers=dg.EnvVar("KAFKA_BOOTSTRAP_SERVERS"),
            security_protocol=dg.EnvVar("KAFKA_SECURITY_PROTOCOL"),
            sasl_mechanism=dg.EnvVar("KAFKA_SASL_MECHANISM"),
            sasl_username=dg.EnvVar("KAFKA_SASL_USERNAME"),
            sasl_password=dg.EnvVar("KAFKA_SASL_PASSWORD"),
            ssl_ca_location=dg.EnvVar("KAFKA_SSL_CA_LOCATION"),
        ),
        "pyspark": pyspark,
        "streaming": streaming,
        "warehouse": warehouse,
        "staging_io_manager": StagingIOManager(settings=streaming, pyspark=pyspark),
        "warehouse_io_manager": PostgresIOManager(warehouse=warehouse),
        "kafka_connect": KafkaConnectResource(url=dg.EnvVar("CONNECT_URL")),
        "source_db": SourceDatabaseResource(
            dsn=dg.EnvVar("SOURCE_DSN"), cdc_user=dg.EnvVar("SOURCE_CDC_USER")
        ),
    }


@dataclass(frozen=True)
class CodeLocation:
    defs: dg.Definitions
    pipelines: list[KafkaPipeline]
    cdc_sources: list[CdcSource]


def build_code_location(defs_module: ModuleType | None = None) -> CodeLocation:
    """Everything for a code location, and the components it was derived from.

    `defs_module` is this project's `kafka_assets.defs` by default; another project can pass its
    own defs package of YAML files and get the same sensors, quarantine and resources.
    """
    if defs_module is None:
        import kafka_assets.defs as defs_module
    project, pipelines, cdc = load_pipelines(defs_module)
    check_unique(pipelines, cdc)
    all_feeds = feeds(pipelines, cdc)
    assets = dg.Definitions.merge(
        project,
        dg.Definitions(
            assets=quarantine_assets(all_feeds, project),
            resources=resources(),
            # One Spark driver per run: the multiprocess executor would start a JVM per step.
            executor=dg.in_process_executor,
        ),
    )
    graph = assets.resolve_asset_graph()
    defs = dg.Definitions.merge(assets, dg.Definitions(sensors=sensors(all_feeds, graph)))
    return CodeLocation(defs, pipelines, cdc)


def build_definitions(
    defs_module: ModuleType | None = None,
) -> tuple[dg.Definitions, list[KafkaPipeline]]:
    """The code location's definitions and its pipelines (see `build_code_location`)."""
    location = build_code_location(defs_module)
    return location.defs, location.pipelines


_location = build_code_location()
defs, pipelines, cdc_sources = _location.defs, _location.pipelines, _location.cdc_sources
