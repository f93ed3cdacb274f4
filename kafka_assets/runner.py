"""Run what a sensor requests, in this process, against the instance the daemon would use.

The demo and the integration tests drive the pipeline the way the daemon does (evaluate the
offsets sensor, then launch its request) but without a daemon or a run launcher, so one command
shows the whole path and its output. Runs, materializations and checks land in the instance.
"""

from collections.abc import Mapping, Sequence

import dagster as dg


def materialize(
    instance: dg.DagsterInstance,
    selection: Sequence[dg.AssetKey],
    checks: Sequence[dg.AssetCheckKey] | None = None,
    run_config: Mapping | None = None,
    tags: Mapping[str, str] | None = None,
    defs: dg.Definitions | None = None,
    log_level: str = "WARNING",
) -> dg.ExecuteInProcessResult:
    """Materialize `selection` from the definitions (the project's by default), in process, as
    the daemon's run of the same subset would. `checks=None` runs the selected assets' checks.

    `log_level` only quiets the console: every event is still written to the instance.
    """
    defs = defs or _project_defs()
    run_config = {
        **(run_config or {}),
        "loggers": {"console": {"config": {"log_level": log_level}}},
    }
    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection=set(selection),
        asset_check_selection=None if checks is None else set(checks),
    )
    return job.execute_in_process(
        instance=instance, run_config=run_config, tags=tags, raise_on_error=False
    )


def _project_defs() -> dg.Definitions:
    from kafka_assets.definitions import defs

    return defs


def tick(
    instance: dg.DagsterInstance,
    sensor_name: str = "kafka_offsets_sensor",
    defs: dg.Definitions | None = None,
    cursor: str | None = None,
):
    """One evaluation of a sensor, as the daemon would do it (the demo keeps no cursor of its own:
    the offsets sensor counts what the streams committed in the instance as covered)."""
    defs = defs or _project_defs()
    sensor = defs.resolve_sensor_def(sensor_name)
    resources = {k: defs.resources[k] for k in sensor.required_resource_keys}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = sensor(context)
    if isinstance(result, dg.SensorResult):
        for event in result.asset_events:
            instance.report_runless_asset_event(event)
    return result


def run_request(
    instance: dg.DagsterInstance, request: dg.RunRequest, defs: dg.Definitions | None = None
) -> dg.ExecuteInProcessResult:
    tags = dict(request.tags)
    if request.run_key:
        tags["dagster/run_key"] = request.run_key
    selection = list(request.asset_selection)
    return materialize(instance, selection, request.asset_check_keys, tags=tags, defs=defs)


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    """`asset:check` -> passed, for every check the run evaluated."""
    out = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            data = event.event_specific_data
            out[f"{data.asset_key.to_user_string()}:{data.check_name}"] = data.passed
    return out
