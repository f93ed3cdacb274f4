"""The Definitions load, and the lineage from topic to table is exactly what is written here."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest

from kafka_assets.definitions import defs
from kafka_assets_tests.fakes import FakeKafka

ROOT = Path(__file__).resolve().parents[2]


def key(path: str) -> dg.AssetKey:
    return dg.AssetKey(path.split("/"))


def keys(*paths: str) -> set[dg.AssetKey]:
    return {key(p) for p in paths}


ASSETS = {
    "kafka": {"kafka/orders", "kafka/page_views", "kafka/shop_events"},
    "spark": {
        "spark/orders_events",
        "spark/page_views_events",
        "spark/page_view_counts",
    },
    "warehouse": {
        "warehouse/orders",
        "warehouse/page_views",
        "warehouse/quarantine",
        "warehouse/revenue_per_minute",
        "warehouse/page_view_counts",
    },
}

# The legacy shop captured by Debezium (kafka_assets/defs/legacy/cdc/defs.yaml), group `legacy`.
LEGACY_TABLES = ("customers", "products", "orders")
LEGACY = {
    "source": {f"legacy/shop/{t}" for t in LEGACY_TABLES},
    "connect": {"connect/legacy_shop"},
    "kafka": {f"kafka/legacy.shop.{t}" for t in LEGACY_TABLES},
    "spark": {f"spark/legacy_{t}_changes" for t in LEGACY_TABLES},
    "warehouse": {f"warehouse/legacy_{t}" for t in LEGACY_TABLES} | {"warehouse/legacy_quarantine"},
}
# Lineage starts at the legacy table: table -> connector -> topic -> stream -> mirror table.
LEGACY_EDGES = (
    {(f"legacy/shop/{t}", "connect/legacy_shop") for t in LEGACY_TABLES}
    | {("connect/legacy_shop", f"kafka/legacy.shop.{t}") for t in LEGACY_TABLES}
    | {(f"kafka/legacy.shop.{t}", f"spark/legacy_{t}_changes") for t in LEGACY_TABLES}
    | {(f"spark/legacy_{t}_changes", f"warehouse/legacy_{t}") for t in LEGACY_TABLES}
    | {(f"spark/legacy_{t}_changes", "warehouse/legacy_quarantine") for t in LEGACY_TABLES}
)
LEGACY_CHECKS = {
    dg.AssetCheckKey(key(f"warehouse/legacy_{t}"), f"legacy_{t}_{name}")
    for t in LEGACY_TABLES
    for name in ("matches_source", "replication_lag")
}

# parent -> child. The producer writes the topics, so it is drawn upstream of them.
EDGES = {
    ("kafka/shop_events", "kafka/orders"),
    ("kafka/shop_events", "kafka/page_views"),
    ("kafka/orders", "spark/orders_events"),
    ("kafka/page_views", "spark/page_views_events"),
    ("kafka/page_views", "spark/page_view_counts"),
    ("spark/orders_events", "warehouse/orders"),
    ("spark/orders_events", "warehouse/quarantine"),
    ("spark/page_views_events", "warehouse/page_views"),
    ("spark/page_views_events", "warehouse/quarantine"),
    # Revenue totals live in the warehouse, added batch by batch: no second read of orders.
    ("spark/orders_events", "warehouse/revenue_per_minute"),
    ("spark/page_view_counts", "warehouse/page_view_counts"),
}

CHECKS = {
    dg.AssetCheckKey(key("warehouse/orders"), "orders_events_reconciled"),
    dg.AssetCheckKey(key("warehouse/orders"), "orders_unique_keys"),
    dg.AssetCheckKey(key("warehouse/page_views"), "page_views_events_reconciled"),
    dg.AssetCheckKey(key("kafka/orders"), "consumer_lag"),
    dg.AssetCheckKey(key("kafka/page_views"), "consumer_lag"),
    dg.AssetCheckKey(key("kafka/orders"), "partitions_as_declared"),
    dg.AssetCheckKey(key("kafka/page_views"), "partitions_as_declared"),
    dg.AssetCheckKey(key("kafka/orders"), "unread_not_deleted"),
    dg.AssetCheckKey(key("kafka/page_views"), "unread_not_deleted"),
}
# What the sensor requests with a topic's new offsets: the topic's checks and its readers'.
REQUESTED_CHECKS = CHECKS | LEGACY_CHECKS

# Each topic's own asset is in its runs too: re-described, its page shows the run's end offsets.
SENSOR_TARGETS = {
    "orders": keys(
        "kafka/orders",
        "spark/orders_events",
        "warehouse/orders",
        "warehouse/quarantine",
        "warehouse/revenue_per_minute",
    ),
    "page_views": keys(
        "kafka/page_views",
        "spark/page_views_events",
        "spark/page_view_counts",
        "warehouse/page_views",
        "warehouse/quarantine",
        "warehouse/page_view_counts",
    ),
}
# A CDC topic's new offsets request its stream, its mirror table and the CDC quarantine: never
# the connector (it is materialized once, by hand or by the demo).
SENSOR_TARGETS.update(
    {
        f"legacy.shop.{t}": keys(
            f"kafka/legacy.shop.{t}",
            f"spark/legacy_{t}_changes",
            f"warehouse/legacy_{t}",
            "warehouse/legacy_quarantine",
        )
        for t in LEGACY_TABLES
    }
)


@pytest.fixture(scope="module")
def graph():
    return defs.resolve_asset_graph()


def test_definitions_load() -> None:
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_implicit_global_asset_job_def() is not None


def test_asset_keys(graph) -> None:
    expected = {key(p) for paths in [*ASSETS.values(), *LEGACY.values()] for p in paths}
    assert set(graph.get_all_asset_keys()) == expected
    assert set(defs.resolve_all_asset_keys()) == expected


def test_dependency_edges(graph) -> None:
    edges = {
        (parent.to_user_string(), child.to_user_string())
        for parent in graph.get_all_asset_keys()
        for child in graph.get(parent).child_keys
    }
    assert edges == EDGES | LEGACY_EDGES
    # The same graph read from the other side.
    parents = {
        (parent.to_user_string(), child.to_user_string())
        for child in graph.get_all_asset_keys()
        for parent in graph.get(child).parent_keys
    }
    assert parents == EDGES | LEGACY_EDGES


def test_mirror_lineage_starts_at_the_legacy_table(graph) -> None:
    for t in LEGACY_TABLES:
        seen, frontier = set(), {key(f"warehouse/legacy_{t}")}
        while frontier:
            frontier = {p for k in frontier for p in graph.get(k).parent_keys} - seen
            seen |= frontier
        assert seen == keys(
            f"spark/legacy_{t}_changes",
            f"kafka/legacy.shop.{t}",
            "connect/legacy_shop",
            *LEGACY["source"],
        )
        assert graph.get(key(f"legacy/shop/{t}")).is_external


def test_every_table_is_fed_from_a_topic(graph) -> None:
    for table in ASSETS["warehouse"]:
        seen, frontier = set(), {key(table)}
        while frontier:
            frontier = {p for k in frontier for p in graph.get(k).parent_keys} - seen
            seen |= frontier
        assert seen & keys("kafka/orders", "kafka/page_views"), table


def test_one_group_per_domain_folder(graph) -> None:
    """Everything under defs/shop/ is group `shop`: the UI draws one domain without group boxes."""
    for paths in ASSETS.values():
        for path in paths:
            assert graph.get(key(path)).group_name == "shop", path
    for paths in LEGACY.values():
        for path in paths:
            assert graph.get(key(path)).group_name == "legacy", path


def test_only_warehouse_assets_follow_their_streams_automatically(graph) -> None:
    for group, paths in [*ASSETS.items(), *LEGACY.items()]:
        for path in paths:
            condition = graph.get(key(path)).automation_condition
            if group == "warehouse":
                assert condition == dg.AutomationCondition.eager(), path
            else:
                assert condition is None, path


def test_asset_checks(graph) -> None:
    assert set(graph.asset_check_keys) == CHECKS | LEGACY_CHECKS


def test_sensor_targets_downstream_of_each_topic() -> None:
    sensor = defs.resolve_sensor_def("kafka_offsets_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert set(sensor.required_resource_keys) == {"kafka"}

    job = defs.resolve_job_def(sensor.job_name)
    assert set(job.asset_layer.executable_asset_keys) == set().union(*SENSOR_TARGETS.values())


@pytest.mark.parametrize("topic", ["orders", "page_views", "legacy.shop.customers"])
def test_sensor_run_request_resolves_to_a_job_subset(topic: str) -> None:
    """What the daemon does with a request: subset the sensor's job, checks included."""
    kafka = FakeKafka()
    kafka.create("orders", 1)
    kafka.create("page_views", 1)
    kafka.create("legacy.shop.customers", 1)
    kafka.append(topic, 0, 1)
    context = dg.build_sensor_context(
        instance=dg.DagsterInstance.ephemeral(), resources={"kafka": kafka}, definitions=defs
    )
    sensor = defs.resolve_sensor_def("kafka_offsets_sensor")

    (request,) = sensor(context).run_requests

    assert set(request.asset_selection) == SENSOR_TARGETS[topic]
    requested_checks = set(request.asset_check_keys)
    assert requested_checks == {c for c in REQUESTED_CHECKS if c.asset_key in SENSOR_TARGETS[topic]}
    subset = defs.resolve_job_def(sensor.job_name).get_subset(
        asset_selection=set(request.asset_selection), asset_check_selection=requested_checks
    )
    assert set(subset.asset_layer.selected_asset_keys) == SENSOR_TARGETS[topic]
    assert set(subset.asset_layer.asset_graph.asset_check_keys) == requested_checks


def test_automation_sensor_runs_by_default() -> None:
    """The tables' eager conditions only act if an automation sensor runs: this one does."""
    sensor = defs.resolve_sensor_def("warehouse_automation")
    assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    graph = defs.resolve_asset_graph()
    automated = {k for k in graph.get_all_asset_keys() if graph.get(k).automation_condition}
    assert automated == keys(*ASSETS["warehouse"], *LEGACY["warehouse"])
    assert automated <= sensor.asset_selection.resolve(graph)


def _env_names() -> set[str]:
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^(?:export\s+)?([A-Z][A-Z0-9_]*)=", text, flags=re.M))


IMPORT_PROBE = textwrap.dedent(
    """
    import os, socket, sys

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access at import: {args!r}")

    socket.socket.connect = no_network
    socket.socket.connect_ex = no_network
    socket.create_connection = no_network

    # Third-party packages may consult the environment when imported; the project must not.
    import confluent_kafka, dagster, dagster_pyspark, psycopg, pyspark  # noqa: F401

    class Recording(dict):
        def __init__(self, data):
            super().__init__(data)
            self.read = set()
        def __getitem__(self, k):
            self.read.add(k)
            return super().__getitem__(k)
        def get(self, k, default=None):
            self.read.add(k)
            return super().get(k, default)
        def __contains__(self, k):
            self.read.add(k)
            return super().__contains__(k)

    original, recording = os.environ, Recording(os.environ)
    os.environ = recording  # os.getenv reads this module global
    try:
        from kafka_assets.definitions import defs
        dagster.Definitions.validate_loadable(defs)
    finally:
        os.environ = original
    print("READ=" + ",".join(sorted(recording.read)))
    """
)


def test_import_reads_no_settings_and_opens_no_connection() -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("READ=")]
    read = set(filter(None, line.removeprefix("READ=").split(",")))
    settings = _env_names()
    assert {"KAFKA_BOOTSTRAP_SERVERS", "WAREHOUSE_DSN"} <= settings  # the probe is meaningful
    assert not read & settings, f"read at import: {sorted(read & settings)}"
