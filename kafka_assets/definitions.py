"""The one entry point: every asset, check, sensor and resource of kafka-assets.

Environment-specific settings arrive only through `dg.EnvVar` (see `.env.example`); nothing here
reads the environment or opens a connection when the module is imported.
"""

from collections.abc import Sequence

import dagster as dg

from kafka_assets.kafka.assets import TOPICS, shop_events, topic_assets, topic_key
from kafka_assets.kafka.resources import KafkaResource
from kafka_assets.kafka.sensors import build_offsets_sensor
from kafka_assets.spark.assets import stream_assets
from kafka_assets.spark.resources import StreamingSettings, build_pyspark_resource
from kafka_assets.spark.staging import StagingIOManager
from kafka_assets.warehouse.assets import warehouse_assets
from kafka_assets.warehouse.checks import topic_lag_checks, warehouse_checks
from kafka_assets.warehouse.io_manager import PostgresIOManager
from kafka_assets.warehouse.resources import PostgresResource

assets = [*topic_assets, shop_events, *stream_assets, *warehouse_assets]
asset_checks = [*warehouse_checks, *topic_lag_checks]


def downstream(key: dg.AssetKey, graph: Sequence[dg.AssetsDefinition]) -> list[dg.AssetKey]:
    """Every asset that reads `key`, directly or through others (the lineage the sensor drives)."""
    deps = {k: set(d) for a in graph for k, d in a.asset_deps.items()}
    found: set[dg.AssetKey] = set()
    frontier = {key}
    while frontier:
        frontier = {k for k, d in deps.items() if d & frontier and k not in found}
        found |= frontier
    return sorted(found, key=str)


def checks_for(keys: set[dg.AssetKey]) -> list[dg.AssetCheckKey]:
    return [ck for c in asset_checks for ck in c.check_keys if ck.asset_key in keys]


# The producer fills topics on request; the sensor drives only what reads them.
_readers = [a for a in assets if a is not shop_events]
sensor_targets = {t.name: downstream(topic_key(t.name), _readers) for t in TOPICS}
kafka_offsets_sensor = build_offsets_sensor(
    sensor_targets,
    {t: checks_for({*keys, topic_key(t)}) for t, keys in sensor_targets.items()},
)

pyspark = build_pyspark_resource()
streaming = StreamingSettings(
    checkpoint_base=dg.EnvVar("SPARK_CHECKPOINT_BASE"),
    staging_base=dg.EnvVar("SPARK_STAGING_BASE"),
)
warehouse = PostgresResource(
    dsn=dg.EnvVar("WAREHOUSE_DSN"), schema_name=dg.EnvVar("WAREHOUSE_SCHEMA")
)

defs = dg.Definitions(
    assets=assets,
    asset_checks=asset_checks,
    sensors=[kafka_offsets_sensor],
    resources={
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
        "warehouse_io_manager": PostgresIOManager(warehouse=warehouse, pyspark=pyspark),
    },
    # One Spark driver per run: the multiprocess executor would start a JVM per step.
    executor=dg.in_process_executor,
)
