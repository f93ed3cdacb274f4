"""`python -m kafka_assets.demo`: the whole pipeline once, end to end, on the local stack.

Starts the services, creates the topics, produces the example stream, lets the offsets sensor
tick, runs what it requests (streams, tables, checks) and prints what landed where. Run it again
and only the new offsets are processed. Everything is recorded in the Dagster instance under
DAGSTER_HOME, so `make dev` shows the same runs, metadata and checks in the UI.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import dagster as dg


def run_selection(instance, selection, checks=(), run_config=None, tags=None):
    """Materialize `selection` (and `checks`) in process, as a sensor's run request would."""
    from kafka_assets.definitions import asset_checks, assets, defs

    chosen = dg.AssetSelection.assets(*selection)
    if checks:
        chosen = chosen | dg.AssetSelection.checks(*checks)
    return dg.materialize(
        [*assets, *asset_checks],
        selection=chosen,
        instance=instance,
        resources=defs.resources,
        run_config=run_config,
        tags=tags,
        raise_on_error=False,
    )


def _materialize(defs, instance, selection, run_config=None, tags=None, checks=()):
    result = run_selection(instance, selection, checks, run_config, tags)
    if not result.success:
        failures = [e.message for e in result.all_events if e.is_failure]
        raise SystemExit(f"run {result.run_id} failed: {failures[:3]}")
    return result


def _check_results(result) -> list[tuple[str, bool]]:
    out = []
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            data = event.event_specific_data
            out.append((f"{data.asset_key.to_user_string()}:{data.check_name}", data.passed))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kafka_assets.demo", description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000, help="messages to produce")
    parser.add_argument("--malformed-fraction", type=float, default=0.01)
    args = parser.parse_args(argv)

    from kafka_assets.local.services import LocalServices, write_env_file

    timings: dict[str, float] = {}
    t0 = time.monotonic()
    services = LocalServices.from_env()
    endpoints = services.up()
    env = endpoints.as_env(services.environ)
    os.environ.update(env)
    write_env_file(env)
    timings["services"] = time.monotonic() - t0

    from kafka_assets.definitions import defs, kafka_offsets_sensor
    from kafka_assets.kafka.assets import TOPICS
    from kafka_assets.warehouse.report import table_summary
    from kafka_assets.warehouse.resources import PostgresResource

    instance = dg.DagsterInstance.get()
    stage = time.monotonic()
    _materialize(defs, instance, [t.key for t in TOPICS])
    timings["topics"] = time.monotonic() - stage

    stage = time.monotonic()
    produce = _materialize(
        defs,
        instance,
        [dg.AssetKey(["kafka", "shop_events"])],
        run_config={
            "ops": {
                "kafka__shop_events": {
                    "config": {
                        "count": args.messages,
                        "malformed_fraction": args.malformed_fraction,
                    }
                }
            }
        },
    )
    produced = produce.asset_materializations_for_node("kafka__shop_events")[0].metadata
    timings["produce"] = time.monotonic() - stage

    # One sensor tick, exactly as the daemon would evaluate it, with the cursor kept on disk.
    stage = time.monotonic()
    cursor_file = Path(env["DAGSTER_HOME"]) / "demo_sensor_cursor.json"
    cursor = cursor_file.read_text() if cursor_file.exists() else None
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"kafka": defs.resources["kafka"]}
    )
    tick = kafka_offsets_sensor(context)
    timings["sensor_tick"] = time.monotonic() - stage
    if isinstance(tick, dg.SkipReason):
        print(f"sensor: {tick.skip_message}")
        return 0
    for observation in tick.asset_events:
        instance.report_runless_asset_event(observation)

    checks: list[tuple[str, bool]] = []
    stage = time.monotonic()
    for request in tick.run_requests:
        print(f"sensor requested run {request.run_key}: {len(request.asset_selection)} assets")
        result = _materialize(
            defs,
            instance,
            request.asset_selection,
            tags={**request.tags, "dagster/run_key": request.run_key},
            checks=request.asset_check_keys or (),
        )
        checks += _check_results(result)
    timings["streams_tables_checks"] = time.monotonic() - stage
    cursor_file.write_text(tick.cursor or "")

    print()
    print(
        f"produced   {json.dumps(produced['per_topic'].value)}  "
        f"malformed sent {json.dumps(produced['malformed_sent'].value)}"
    )
    print(
        table_summary(
            PostgresResource(dsn=env["WAREHOUSE_DSN"], schema_name=env["WAREHOUSE_SCHEMA"])
        )
    )
    print("checks     " + ", ".join(f"{name}={'PASS' if ok else 'FAIL'}" for name, ok in checks))
    print("timings    " + ", ".join(f"{k}={v:.1f}s" for k, v in timings.items()))
    print(f"\nwarehouse  psql {env['WAREHOUSE_DSN']}  (schema {env['WAREHOUSE_SCHEMA']})")
    print("UI         make dev  ->  http://127.0.0.1:3000")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
