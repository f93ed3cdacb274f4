"""The orders pipeline on a Spark standalone cluster and over Spark Connect: SPARK_MASTER
(spark://… or sc://…) is the only change.

The cluster (one master, one worker with 1 core and 1 GB) starts from the pyspark wheel on free
ports under tmp_path; the Connect server is the session's (conftest). The run happens in a child
process: this pytest process already holds the session's local-mode SparkContext, and a JVM
holds only one. The child uses the same Dagster instance (SQLite under DAGSTER_HOME), so this
process reads what the run recorded.
"""

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest

from kafka_assets import runner
from kafka_assets.local.services import write_dagster_yaml
from kafka_assets.local.spark_cluster import SparkStandalone
from kafka_assets.paths import PROJECT_ROOT
from kafka_assets.shop.generator import GeneratorConfig, generate
from kafka_assets_tests.conftest import free_port
from kafka_assets_tests.integration.test_pipeline import (
    START,
    _expected,
    _produce,
    _query,
    _tick,
)

pytestmark = pytest.mark.integration

COUNT, SEED = 1000, 11
ORDERS_STREAM = dg.AssetKey(["spark", "orders_events"])
# The orders path of what the sensor asks for: the other streams add minutes on a busy 2-core
# machine and nothing the cluster does differently.
ORDERS_SLICE = {
    dg.AssetKey(["kafka", "orders"]),
    ORDERS_STREAM,
    dg.AssetKey(["warehouse", "orders"]),
    dg.AssetKey(["warehouse", "quarantine"]),
}
RECONCILED = dg.AssetCheckKey(dg.AssetKey(["warehouse", "orders"]), "orders_events_reconciled")


def test_the_pipeline_runs_on_a_standalone_cluster(pipeline_env, tmp_path):
    env = pipeline_env
    began = time.monotonic()
    cluster = SparkStandalone(
        tmp_path / "spark-cluster",
        master_port=free_port(),
        master_ui_port=free_port(),
        worker_port=free_port(),
        worker_ui_port=free_port(),
        worker_cores=1,
        worker_memory="1g",
    )
    try:
        # The cluster boots while the topics are made and filled.
        cluster.launch()
        write_dagster_yaml(Path(env["DAGSTER_HOME"]), postgres=False)
        instance = dg.DagsterInstance.get()
        topics = [dg.AssetKey(["kafka", "orders"]), dg.AssetKey(["kafka", "page_views"])]
        assert runner.materialize(instance, topics).success
        sent = _produce(instance, COUNT, seed=SEED)
        tick = _tick(instance, None)
        assert isinstance(tick, dg.SensorResult) and len(tick.run_requests) == 1
        request = tick.run_requests[0]
        assert ORDERS_SLICE <= set(request.asset_selection)
        cluster.wait_ready()
        cluster_ready = time.monotonic() - began

        log = tmp_path / "cluster-run.log"
        code = _run_in_child(
            ORDERS_SLICE, log, SPARK_MASTER=cluster.master_url, SPARK_LOCAL_IP="127.0.0.1"
        )
        assert code == 0, f"the run on {cluster.master_url} failed; see {log}"
        apps = _finished_apps(cluster)
    finally:
        cluster.stop()
    took = time.monotonic() - began
    print(f"\ncluster ready after {cluster_ready:.1f}s, test done after {took:.1f}s")

    # The stream's query ran on the cluster: the master ran the application to its end.
    assert [(a["name"], a["state"]) for a in apps] == [("kafka-assets", "FINISHED")], apps
    assert apps[0]["cores"] == 1  # the worker's one core, in an executor of the cluster
    stream = instance.get_latest_materialization_event(ORDERS_STREAM).asset_materialization
    assert stream.metadata["spark_master"].value == cluster.master_url
    assert stream.metadata["staged_by"].value == "foreachBatch"
    assert sum(stream.metadata["end_offsets"].value.values()) == sent["acked"]["orders"]

    # The same tables as in local mode, and the reconciliation against Kafka holds.
    latest = _expected([(COUNT, SEED)])[0]
    assert dict(_query(env, "SELECT order_id, status FROM orders")) == latest
    assert _query(env, "SELECT count(*) FROM quarantine")[0][0] == sent["malformed"]["orders"]
    checks = runner.check_results(runner.materialize(instance, [], checks=[RECONCILED]))
    assert checks == {"warehouse/orders:orders_events_reconciled": True}


def _run_in_child(selection, log: Path, **env: str) -> int:
    """Materialize `selection` in a new process with `env` added: this process already holds
    the session's local-mode SparkContext, and a JVM holds only one. Returns its exit code."""
    spec = json.dumps({"selection": sorted(k.to_user_string() for k in selection)})
    with log.open("w") as out:
        return subprocess.run(
            [sys.executable, "-m", "kafka_assets_tests.fault_run", spec],
            cwd=PROJECT_ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=600,
            check=False,
        ).returncode


def _finished_apps(cluster: SparkStandalone, timeout: float = 20.0) -> list[dict]:
    """The master's completed applications, once the driver's exit has reached it."""
    deadline = time.monotonic() + timeout
    while True:
        apps = cluster.master_state().get("completedapps") or []
        if apps or time.monotonic() > deadline:
            return apps
        time.sleep(0.5)


def test_the_pipeline_runs_over_spark_connect(pipeline_env, spark_connect, tmp_path):
    """SPARK_MASTER=sc://…: the streams' queries and their staging run in the server."""
    env = pipeline_env
    write_dagster_yaml(Path(env["DAGSTER_HOME"]), postgres=False)
    instance = dg.DagsterInstance.get()
    topics = [dg.AssetKey(["kafka", "orders"]), dg.AssetKey(["kafka", "page_views"])]
    assert runner.materialize(instance, topics).success
    sent = _produce(instance, COUNT, seed=SEED)
    selection = ORDERS_SLICE | {dg.AssetKey(["warehouse", "revenue_per_minute"])}
    log = tmp_path / "connect-run.log"
    url = spark_connect.url
    began = time.monotonic()
    code = _run_in_child(selection, log, SPARK_MASTER=url)
    assert code == 0, f"the run over {url} failed; see {log}"
    print(f"\nrun over Spark Connect took {time.monotonic() - began:.1f}s")

    stream = instance.get_latest_materialization_event(ORDERS_STREAM).asset_materialization
    assert stream.metadata["spark_master"].value == url
    # Staged by the project's JVM sink: no Python worker started in the server for the query.
    assert stream.metadata["staged_by"].value == "StagedParquetSink"
    assert stream.metadata["input_rows"].value == sent["acked"]["orders"]
    assert sum(stream.metadata["end_offsets"].value.values()) == sent["acked"]["orders"]
    latest = _expected([(COUNT, SEED)])[0]
    assert dict(_query(env, "SELECT order_id, status FROM orders")) == latest
    assert _query(env, "SELECT count(*) FROM quarantine")[0][0] == sent["malformed"]["orders"]
    # The revenue totals' Spark job over the staged batch ran in the server too: every paid
    # order event is counted once.
    counted = _query(env, "SELECT coalesce(sum(orders), 0) FROM revenue_per_minute")[0][0]
    assert counted == _paid_events(COUNT, SEED)
    checks = runner.check_results(runner.materialize(instance, [], checks=[RECONCILED]))
    assert checks == {"warehouse/orders:orders_events_reconciled": True}


def _paid_events(count: int, seed: int) -> int:
    start = datetime.fromisoformat(START.replace("Z", "+00:00"))
    config = GeneratorConfig(seed=seed, malformed_fraction=0.02)
    return sum(
        1
        for m in generate(count, config, start)
        if m.topic == "orders" and not m.malformed and json.loads(m.value)["status"] == "paid"
    )
