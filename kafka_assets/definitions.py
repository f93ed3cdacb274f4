"""The one entry point: the declared pipelines, plus what cuts across them.

Each pipeline is a `defs.yaml` under `kafka_assets/defs/` (see `kafka_assets.lib`). This module
loads that folder and derives, from the pipelines it finds, the pieces no single YAML owns: the
shared quarantine tables, the offsets sensor, the automation sensor and the resources. Adding a
pipeline needs no edit here.

Environment-specific settings arrive only through `dg.EnvVar` (see `.env.example`); nothing here
reads the environment or opens a connection when the module is imported.
"""

import warnings
from collections import defaultdict
from pathlib import Path
from types import ModuleType

import dagster as dg

from kafka_assets.kafka.resources import KafkaResource
from kafka_assets.kafka.sensors import WatchedTopic, build_offsets_sensor
from kafka_assets.lib import KafkaPipeline
from kafka_assets.spark.resources import StreamingSettings, build_pyspark_resource
from kafka_assets.spark.staging import StagingIOManager
from kafka_assets.warehouse.assets import build_quarantine_asset
from kafka_assets.warehouse.io_manager import PostgresIOManager
from kafka_assets.warehouse.resources import PostgresResource
from kafka_assets.warehouse.tables import quarantine_table


class PipelineConflict(ValueError):
    """Two declared pipelines claim the same topic, stream or table."""


def load_pipelines(defs_module: ModuleType) -> tuple[dg.Definitions, list[KafkaPipeline]]:
    """Every component under `defs_module`, built, and the pipelines among them."""
    package_dir = Path(defs_module.__file__).resolve().parent
    project_root = package_dir.parents[len(defs_module.__name__.split(".")) - 1]
    with warnings.catch_warnings():
        # Loading components notes, per YAML file, that their APIs are beta or preview: known,
        # chosen, and noise in every run's log.
        warnings.simplefilter("ignore", dg.BetaWarning)
        warnings.simplefilter("ignore", dg.PreviewWarning)
        tree = dg.ComponentTree.from_module(defs_module=defs_module, project_root=project_root)
        return tree.build_defs(), tree.get_all_components(of_type=KafkaPipeline)


def check_unique(pipelines: list[KafkaPipeline]) -> None:
    """Names that must be unique across all YAML files, with both claimants in the message."""
    owners: dict[tuple[str, str], str] = {}
    for p in pipelines:
        claims = [("topic", p.topic.name)]
        claims += [("stream", s.name) for s in p.streams]
        claims += [("table", t.name) for t in p.tables]
        for claim in claims:
            other = owners.setdefault(claim, p.topic.name)
            if other != p.topic.name:
                raise PipelineConflict(
                    f"{claim[0]} {claim[1]!r} is declared by the pipelines of topic {other!r} "
                    f"and of topic {p.topic.name!r}; rename one of them"
                )
    for p in pipelines:
        owner = owners.get(("table", p.quarantine.table))
        if owner is not None:
            raise PipelineConflict(
                f"quarantine table {p.quarantine.table!r} of topic {p.topic.name!r} is also a "
                f"table of the pipeline of topic {owner!r}"
            )


def quarantine_assets(
    pipelines: list[KafkaPipeline], project: dg.Definitions
) -> list[dg.AssetsDefinition]:
    """One table per quarantine name, fed by the events stream of every pipeline naming it, in
    its pipelines' group when they share one."""
    by_name: dict[str, list[KafkaPipeline]] = defaultdict(list)
    for p in pipelines:
        by_name[p.quarantine.table].append(p)
    group_of = {
        k: g
        for a in project.assets or ()
        if isinstance(a, dg.AssetsDefinition)
        for k, g in a.group_names_by_key.items()
    }
    out = []
    for name, members in sorted(by_name.items()):
        groups = {group_of.get(p.events.key, "warehouse") for p in members}
        group = groups.pop() if len(groups) == 1 else "quarantine"
        out.append(
            build_quarantine_asset(quarantine_table(name), [p.events.key for p in members], group)
        )
    return out


def sensors(pipelines: list[KafkaPipeline], graph) -> list[dg.SensorDefinition]:
    """The offsets sensor over every declared topic, and the automation sensor, both RUNNING."""
    watched = {}
    for p in pipelines:
        streams = [s.key for s in p.streams]
        # The topic too: its page then shows the end offsets each run started from.
        targets = dg.AssetSelection.assets(p.topic_key, *streams).downstream().resolve(graph)
        checks = {c for c in graph.asset_check_keys if c.asset_key in targets}
        watched[p.topic.name] = WatchedTopic(
            key=p.topic_key,
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
    pyspark = build_pyspark_resource()
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
    }


def build_definitions(
    defs_module: ModuleType | None = None,
) -> tuple[dg.Definitions, list[KafkaPipeline]]:
    """Everything for a code location, and the pipelines it was derived from.

    `defs_module` is this project's `kafka_assets.defs` by default; another project can pass its
    own defs package of pipeline YAML files and get the same sensors, quarantine and resources.
    """
    if defs_module is None:
        import kafka_assets.defs as defs_module
    project, pipelines = load_pipelines(defs_module)
    check_unique(pipelines)
    assets = dg.Definitions.merge(
        project,
        dg.Definitions(
            assets=quarantine_assets(pipelines, project),
            resources=resources(),
            # One Spark driver per run: the multiprocess executor would start a JVM per step.
            executor=dg.in_process_executor,
        ),
    )
    graph = assets.resolve_asset_graph()
    return dg.Definitions.merge(
        assets, dg.Definitions(sensors=sensors(pipelines, graph))
    ), pipelines


defs, pipelines = build_definitions()
