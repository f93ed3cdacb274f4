"""Automation that really runs: the Dagster daemon over the real services.

After a demo-style run (sensor evaluated and its request executed in process), the daemon's
offsets sensor sees nothing new and launches nothing; a stream materialized by hand is followed
by its tables through the RUNNING automation sensor, with no click.
"""

from pathlib import Path

import dagster as dg
import pytest

from kafka_assets import runner
from kafka_assets.local.services import write_dagster_yaml
from kafka_assets_tests.dagster_process import start_dagster, stop_group, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
START = "2026-11-24T10:00:00Z"


def test_daemon_launches_nothing_old_and_follows_a_stream_run_by_hand(
    pipeline_env, spark_connect, tmp_path
):
    home = Path(pipeline_env["DAGSTER_HOME"])
    write_dagster_yaml(home, postgres=False)
    instance = dg.DagsterInstance.get()
    assert runner.materialize(
        instance, [dg.AssetKey(["kafka", "orders"]), dg.AssetKey(["kafka", "page_views"])]
    ).success
    produce = {"count": 400, "seed": 3, "start_time": START}
    assert runner.materialize(
        instance,
        [dg.AssetKey(["kafka", "shop_events"])],
        run_config={"ops": {"kafka__shop_events": {"config": produce}}},
    ).success
    tick = runner.tick(instance)
    (request,) = tick.run_requests
    assert runner.run_request(instance, request).success
    before = {r.run_id for r in instance.get_runs()}

    # As `make dev` runs it, from a directory whose .env holds the test settings, its runs on a
    # warm Spark Connect server.
    log = tmp_path / "daemon.log"
    daemon = start_dagster(
        ["dagster-daemon", "run", "-w", "workspace.yaml"],
        {**pipeline_env, "SPARK_MASTER": spark_connect.url},
        tmp_path / "dev",
        log,
    )
    try:
        text = lambda: log.read_text(errors="replace")  # noqa: E731
        wait_for(
            "the offsets sensor to skip",
            lambda: "Sensor kafka_offsets_sensor skipped: No new offsets" in text(),
            120,
            log,
        )
        wait_for(
            "an automation tick",
            lambda: "auto-materialization tick for warehouse_automation" in text(),
            60,
            log,
        )
        # Nothing the demo-style run already processed is launched again.
        assert {r.run_id for r in instance.get_runs()} == before

        stream = dg.AssetKey(["spark", "page_views_events"])
        by_hand = runner.materialize(instance, [stream], checks=[])
        assert by_hand.success
        before.add(by_hand.run_id)

        def followed():
            new = [r for r in instance.get_runs() if r.run_id not in before]
            done = [r for r in new if r.status == dg.DagsterRunStatus.SUCCESS]
            return done or None

        (run,) = wait_for("the tables' run to succeed", followed, 240, log, interval=1)[:1]
        assert run.tags.get("dagster/sensor_name") == "warehouse_automation", run.tags
        assert run.asset_selection == {
            dg.AssetKey(["warehouse", "page_views"]),
            dg.AssetKey(["warehouse", "quarantine"]),
        }
        launched = [r for r in instance.get_runs() if r.run_id not in before]
        assert all(r.tags.get("dagster/sensor_name") != "kafka_offsets_sensor" for r in launched)
    finally:
        stop_group(daemon)
