"""Automation that really runs: the Dagster daemon over the real services.

After a demo-style run (sensor evaluated and its request executed in process), the daemon's
offsets sensor sees nothing new and launches nothing; a stream materialized by hand is followed
by its tables through the RUNNING automation sensor, with no click.
"""

import os
import signal
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest

from kafka_assets import runner
from kafka_assets.local.services import write_dagster_yaml, write_env_file

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
START = "2026-11-24T10:00:00Z"


def wait_for(what: str, predicate, timeout: float, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    tail = log.read_text()[-4000:] if log.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; daemon log:\n{tail}")


def test_daemon_launches_nothing_old_and_follows_a_stream_run_by_hand(pipeline_env, tmp_path):
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

    # As `make dev` runs it: settings from a .env in the working directory (Dagster reads that
    # file from the daemon's cwd, and its values win over the environment's), so a checkout's own
    # .env from `make demo` cannot point this daemon at other services.
    workdir = tmp_path / "dev"
    workdir.mkdir()
    write_env_file(pipeline_env, workdir / ".env")
    (workdir / "workspace.yaml").write_text(
        "load_from:\n  - python_module:\n      module_name: kafka_assets.definitions\n"
        f"      working_directory: {ROOT}\n"
    )
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen(
            [str(Path(os.sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=workdir,
            env=dict(os.environ),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
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

        (run,) = wait_for("the tables' run to succeed", followed, 240, log)[:1]
        assert run.tags.get("dagster/sensor_name") == "warehouse_automation", run.tags
        assert run.asset_selection == {
            dg.AssetKey(["warehouse", "page_views"]),
            dg.AssetKey(["warehouse", "quarantine"]),
        }
        launched = [r for r in instance.get_runs() if r.run_id not in before]
        assert all(r.tags.get("dagster/sensor_name") != "kafka_offsets_sensor" for r in launched)
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
