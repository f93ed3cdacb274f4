"""The Dagster UI as a person sees it, in a real browser, over the real services.

One `dagster dev` (webserver + daemon) per module, over an instance in which the shop pipeline
was materialized in process the way the demo does it. The tests read the rendered pages (Debian's
Chromium through Playwright); the GraphQL endpoint only cross-checks what the page shows.
A browser that cannot start fails the tests: they never skip for it.
"""

import json
import os
import re
import time
import urllib.request
import uuid
from pathlib import Path

import dagster as dg
import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, expect, sync_playwright

from kafka_assets import runner
from kafka_assets.local.services import write_dagster_yaml
from kafka_assets.paths import LOCAL_DIR, PROJECT_ROOT
from kafka_assets_tests.conftest import delete_topics, free_port
from kafka_assets_tests.dagster_process import start_dagster, stop_group, wait_for

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SHOTS = LOCAL_DIR / "ui"
README_LINEAGE = PROJECT_ROOT / "docs" / "lineage.png"
LOCATION = "kafka_assets.definitions"
SENSOR = "kafka_offsets_sensor"
START = "2026-11-24T10:00:00Z"
UI_TIMEOUT_MS = 60_000  # a 2-core machine also running Spark: pages can take a while

SHOP_ASSETS = {
    "kafka/orders",
    "kafka/page_views",
    "spark/orders_events",
    "spark/page_views_events",
    "spark/page_view_counts",
    "warehouse/orders",
    "warehouse/page_views",
    "warehouse/quarantine",
    "warehouse/revenue_per_minute",
    "warehouse/page_view_counts",
}
# topic -> stream -> table (revenue totals are added up in the warehouse, from orders_events)
SHOP_EDGES = {
    ("kafka/orders", "spark/orders_events"),
    ("kafka/page_views", "spark/page_views_events"),
    ("kafka/page_views", "spark/page_view_counts"),
    ("spark/orders_events", "warehouse/orders"),
    ("spark/orders_events", "warehouse/quarantine"),
    ("spark/orders_events", "warehouse/revenue_per_minute"),
    ("spark/page_views_events", "warehouse/page_views"),
    ("spark/page_views_events", "warehouse/quarantine"),
    ("spark/page_view_counts", "warehouse/page_view_counts"),
}

# The producer writes the topics: drawn upstream of them.
PRODUCER_EDGES = {("kafka/shop_events", "kafka/orders"), ("kafka/shop_events", "kafka/page_views")}

# The lineage graph as drawn: group boxes, asset boxes (SVG foreignObjects, in SVG coordinates)
# and edges (SVG paths from a box's side to the next box's side). Edges carry no data attributes,
# so each end is matched to the box it touches.
GRAPH_JS = r"""() => {
  const rect = (f) => ({x: +f.getAttribute('x'), y: +f.getAttribute('y'),
                        w: +f.getAttribute('width'), h: +f.getAttribute('height')});
  const fos = [...document.querySelectorAll('svg foreignObject')];
  const groups = fos.filter(f => f.classList.contains('group')).map(f => ({
    name: f.querySelector('[data-tooltip]')?.getAttribute('data-tooltip'), ...rect(f)}));
  const nodes = fos.filter(f => !f.classList.contains('group'))
    .map(f => ({name: f.querySelector('[class*="assetName"]')?.innerText?.trim(),
                text: (f.textContent || "").toLowerCase(), ...rect(f)}))
    .filter(n => n.name);
  const edges = [...document.querySelectorAll('svg path[marker-end]')].map(p => {
    const nums = (p.getAttribute('d') || '').match(/-?[0-9.]+/g).map(Number);
    return {from: nums.slice(0, 2), to: nums.slice(-2)};
  });
  return {groups, nodes, edges};
}"""


# Every drawn box (groups included) lies inside the visible graph area, so a screenshot shows it.
FITS_JS = r"""() => {
  const view = document.querySelector('[data-svg-viewport]').getBoundingClientRect();
  return [...document.querySelectorAll('svg foreignObject')].every(f => {
    const r = f.getBoundingClientRect();
    return r.left >= view.left && r.right <= view.right
      && r.top >= view.top && r.bottom <= view.bottom;
  });
}"""


class DagsterUI:
    def __init__(self, url: str, instance: dg.DagsterInstance, log: Path):
        self.url = url
        self.instance = instance
        self.log = log

    def graphql(self, query: str) -> dict:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.load(response)
        assert not body.get("errors"), body
        return body["data"]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def dagster_ui(services, spark, spark_connect, tmp_path_factory):
    """`pipeline_env` for the module: the shop pipeline materialized in process, then
    `dagster dev` (webserver + daemon) over the same instance, from a directory with its `.env`.

    As under `make dev`, the daemon's runs use a warm Spark Connect server; this process keeps
    its local-mode Spark, so both kinds meet on the same checkpoints."""
    tmp = tmp_path_factory.mktemp("ui")
    delete_topics(services.bootstrap_servers)
    env = services.as_env({"WAREHOUSE_SCHEMA": f"t_{uuid.uuid4().hex[:10]}"})
    env["SPARK_CHECKPOINT_BASE"] = str(tmp / "checkpoints")
    env["SPARK_STAGING_BASE"] = str(tmp / "staging")
    env["DAGSTER_HOME"] = str(tmp / "dagster_home")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        write_dagster_yaml(Path(env["DAGSTER_HOME"]), postgres=False)
        instance = dg.DagsterInstance.get()
        topics = [dg.AssetKey(["kafka", "orders"]), dg.AssetKey(["kafka", "page_views"])]
        assert runner.materialize(instance, topics).success
        assert runner.materialize(
            instance,
            [dg.AssetKey(["kafka", "shop_events"])],
            run_config={
                "ops": {
                    "kafka__shop_events": {"config": {"count": 400, "seed": 3, "start_time": START}}
                }
            },
        ).success
        (request,) = runner.tick(instance).run_requests
        assert runner.run_request(instance, request).success

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = tmp / "dagster_dev.log"
        started = time.monotonic()
        command = ["dagster", "dev", "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"]
        dev_env = {**env, "SPARK_MASTER": spark_connect.url}
        dev = start_dagster(command, dev_env, tmp / "dev", log)
        try:
            wait_for(
                "the webserver's /server_info", lambda: _answers(f"{url}/server_info"), 180, log
            )
            answered = time.monotonic() - started
            ui = DagsterUI(url, instance, log)
            wait_for(
                f"code location {LOCATION} to load",
                lambda: (
                    "LOADED"
                    in json.dumps(
                        ui.graphql(
                            "{workspaceOrError {... on Workspace {locationEntries {loadStatus}}}}"
                        )
                    )
                ),
                180,
                log,
                interval=1,
            )
            print(
                f"\ndagster dev: UI answered after {answered:.1f}s, "
                f"code location loaded after {time.monotonic() - started:.1f}s"
            )
            yield ui
        finally:
            stop_group(dev)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except PlaywrightError as exc:
            pytest.fail(f"Chromium ({CHROMIUM}) cannot start: {exc}", pytrace=False)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, dagster_ui):
    context = browser.new_context(viewport={"width": 1600, "height": 1100}, base_url=dagster_ui.url)
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    # A fresh instance greets its first visitor with a newsletter dialog: dismiss it whenever
    # it would cover what a test reads or clicks.
    page.add_locator_handler(
        page.get_by_text("Join the Dagster community"),
        lambda: page.get_by_role("button", name="Skip").click(),
    )
    yield page
    context.close()


def shoot(page: Page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=path)
    return path


def graphql_assets(ui: DagsterUI) -> tuple[set[str], set[tuple[str, str]], dict[str, str]]:
    data = ui.graphql("{assetNodes {assetKey {path} groupName dependencyKeys {path}}}")
    nodes, edges, groups = set(), set(), {}
    for node in data["assetNodes"]:
        key = "/".join(node["assetKey"]["path"])
        nodes.add(key)
        groups[key] = node["groupName"]
        edges |= {("/".join(d["path"]), key) for d in node["dependencyKeys"]}
    return nodes, edges, groups


def layer_of(text: str) -> str:
    """A box shows only the key's last part; its kind badges tell topic, stream and table apart
    (`orders` is both a topic and a table)."""
    for kind, layer in (("postgres", "warehouse"), ("spark", "spark"), ("kafka", "kafka")):
        if kind in text:
            return layer
    return f"? ({text[:40]!r})"


def drawn_graph(graph: dict) -> tuple[set[str], set[tuple[str, str]]]:
    """Asset keys (`layer/name`: the box's kind and the name it shows) and edges. An edge end
    touching no single box shows as such (mid-layout)."""
    keys = [f"{layer_of(n['text'])}/{n['name']}" for n in graph["nodes"]]

    def touching(point):
        pad = 12
        x, y = point
        hits = [
            key
            for key, n in zip(keys, graph["nodes"], strict=True)
            if n["x"] - pad <= x <= n["x"] + n["w"] + pad and n["y"] <= y <= n["y"] + n["h"]
        ]
        return hits[0] if len(hits) == 1 else f"{hits} at {point}"

    edges = {(touching(e["from"]), touching(e["to"])) for e in graph["edges"]}
    return set(keys), edges


def test_lineage_shows_every_asset_and_its_edges(page, dagster_ui):
    all_nodes, all_edges, groups = graphql_assets(dagster_ui)
    # One group per domain folder: the shop, and the legacy database captured by Debezium.
    assert set(groups.values()) == {"shop", "legacy"}, groups
    assert all(groups[k] == "shop" for k in SHOP_ASSETS), groups
    assert groups["connect/legacy_shop"] == "legacy"
    expected_nodes = {k for k in all_nodes if groups[k] == "shop"}
    expected_edges = {(a, b) for a, b in all_edges if a in expected_nodes and b in expected_nodes}
    assert SHOP_ASSETS <= expected_nodes
    assert SHOP_EDGES <= expected_edges
    assert PRODUCER_EDGES <= expected_edges
    assert not {(a, b) for a, b in all_edges if (a in expected_nodes) != (b in expected_nodes)}

    # The shop group's own lineage page: the domain drawn whole, with no group box to expand.
    page.goto(f"/locations/{LOCATION}/asset-groups/shop/lineage")
    expect(page.locator('[class*="assetName"]', has_text="orders_events").first).to_be_visible()
    assert page.evaluate(GRAPH_JS)["groups"] == []
    # Wait until every asset and edge is drawn (edges come after boxes) and every box is in view
    # (the screenshot is the README's picture of the whole graph). Zoom out only while something
    # lies outside the view: far out, Dagster draws minimal boxes without their kind badges.
    zoom_out = page.locator('[aria-label="zoom_out"]')
    zooms = 0
    for _ in range(40):
        drawn_nodes, drawn_edges = drawn_graph(page.evaluate(GRAPH_JS))
        complete = drawn_nodes == expected_nodes and drawn_edges == expected_edges
        fits = page.evaluate(FITS_JS)
        if complete and fits:
            break
        if not fits and zooms < 10:
            zoom_out.click()
            zooms += 1
        page.wait_for_timeout(500)
    assert SHOP_ASSETS <= drawn_nodes, sorted(SHOP_ASSETS - drawn_nodes)
    assert drawn_nodes == expected_nodes, drawn_nodes ^ expected_nodes
    assert SHOP_EDGES <= drawn_edges, sorted(SHOP_EDGES - drawn_edges)
    assert drawn_edges == expected_edges, drawn_edges ^ expected_edges
    assert page.evaluate(FITS_JS), "the lineage graph does not fit the page"
    assert page.evaluate(GRAPH_JS)["groups"] == [], "a group box appeared"
    for name in ("orders_events", "revenue_per_minute", "page_views_events", "quarantine"):
        expect(page.locator('[class*="assetName"]', has_text=name).first).to_be_visible()

    shoot(page, "lineage")
    if os.environ.get("KAFKA_ASSETS_UPDATE_SCREENSHOTS") == "1":
        # The README's picture is refreshed on request only, so a test run leaves git clean.
        page.screenshot(path=README_LINEAGE)
        assert README_LINEAGE.stat().st_size < 300_000, README_LINEAGE.stat().st_size


def _consumed_ranges(ui: DagsterUI) -> dict[str, str]:
    event = ui.instance.get_latest_materialization_event(dg.AssetKey(["spark", "orders_events"]))
    return event.asset_materialization.metadata["consumed_ranges"].value


def test_stream_page_shows_consumed_ranges_and_neighbours(page, dagster_ui):
    ranges = _consumed_ranges(dagster_ui)
    assert ranges and all(re.fullmatch(r"\d+-\d+", r) for r in ranges.values()), ranges

    page.goto("/assets/spark/orders_events")
    row = page.locator("tr", has_text="consumed_ranges")
    expect(row).to_be_visible()
    for partition, span in ranges.items():
        expect(row).to_contain_text(f'"{partition}": "{span}"')
    # The edges again, as the asset page lists them.
    lineage = page.get_by_text("Upstream assets").locator("xpath=ancestor::*[3]")
    expect(page.get_by_text("Upstream assets")).to_be_visible()
    expect(lineage).to_contain_text("kafka / orders")
    expect(page.get_by_text("Downstream assets")).to_be_visible()
    expect(lineage).to_contain_text("warehouse / orders")
    expect(lineage).to_contain_text("warehouse / quarantine")
    row.scroll_into_view_if_needed()
    shoot(page, "spark_orders_events")


def test_table_page_shows_rows_columns_and_passed_checks(page, dagster_ui):
    event = dagster_ui.instance.get_latest_materialization_event(
        dg.AssetKey(["warehouse", "orders"])
    )
    rows = event.asset_materialization.metadata["dagster/row_count"].value
    assert rows > 0

    page.goto("/assets/warehouse/orders")
    row_count = page.get_by_text("Row count", exact=True).locator("xpath=..")
    expect(row_count).to_contain_text(str(rows))
    expect(page.get_by_text("Column name")).to_be_visible()
    for column, kind in [
        ("order_id", "text NOT NULL"),
        ("amount", "numeric(14,2) NOT NULL"),
        ("source_partition", "integer NOT NULL"),
        ("source_offset", "bigint NOT NULL"),
    ]:
        cell = page.get_by_role("cell", name=column, exact=True).first
        expect(cell).to_be_visible()
        expect(cell.locator("xpath=ancestor::tr[1]")).to_contain_text(kind)
    expect(page.get_by_text("Upstream assets")).to_be_visible()
    expect(page.get_by_text("spark / orders_events").first).to_be_visible()
    shoot(page, "warehouse_orders")

    page.goto("/assets/warehouse/orders?view=checks")
    expect(page.get_by_text("Checks (2)")).to_be_visible()
    for check in ("orders_unique_keys", "orders_events_reconciled"):
        entry = page.locator(f'[title="{check}"]').first.locator("xpath=..")
        expect(entry).to_contain_text("Succeeded")
        entry.click()
        expect(page).to_have_url(re.compile(check))
        result = page.get_by_text("Evaluation result").locator("xpath=..")
        expect(result).to_contain_text("Passed")
        shoot(page, f"warehouse_orders_check_{check}")


def test_sensor_page_shows_a_tick_that_requested_a_run(page, dagster_ui):
    instance = dagster_ui.instance

    def sensor_runs():
        return [r for r in instance.get_runs() if r.tags.get("dagster/sensor_name") == SENSOR]

    before = {r.run_id for r in sensor_runs()}
    # More messages: the daemon's sensor sees the offsets move and launches a run.
    produced = runner.materialize(
        instance,
        [dg.AssetKey(["kafka", "shop_events"])],
        run_config={
            "ops": {
                "kafka__shop_events": {
                    "config": {"count": 100, "seed": 4, "start_time": "2026-11-24T10:10:00Z"}
                }
            }
        },
    )
    assert produced.success
    launched = wait_for(
        "the daemon's offsets sensor to launch a run",
        lambda: [r for r in sensor_runs() if r.run_id not in before],
        120,
        dagster_ui.log,
        interval=1,
    )
    run_id = launched[0].run_id

    page.goto(f"/locations/{LOCATION}/sensors/{SENSOR}")
    expect(page.get_by_text(SENSOR).first).to_be_visible()
    expect(page.get_by_text("Running", exact=True).first).to_be_visible()
    tick = page.locator("tr", has=page.locator(f'a[href*="/runs/{run_id}"]'))
    expect(tick).to_be_visible()
    expect(tick).to_contain_text("1 run requested")
    expect(tick).to_contain_text(run_id[:8])
    shoot(page, "sensor_kafka_offsets_sensor")


CHECKS_QUERY = """{assetNodes {assetKey {path} groupName assetChecksOrError {... on AssetChecks {
  checks {name executionForLatestMaterialization {status}}}}}}"""


def _runs_in_flight(instance: dg.DagsterInstance) -> list[str]:
    busy = dg.RunsFilter(
        statuses=[
            dg.DagsterRunStatus.QUEUED,
            dg.DagsterRunStatus.NOT_STARTED,
            dg.DagsterRunStatus.STARTING,
            dg.DagsterRunStatus.STARTED,
        ]
    )
    return [r.run_id for r in instance.get_runs(filters=busy)]


def _table_checks(dagster_ui) -> tuple[list[str], dict[str, str | None]]:
    """(the shop's table checks with no result for their table's latest load, every check's
    status), as the UI's GraphQL gives them."""
    blank, results = [], {}
    for node in dagster_ui.graphql(CHECKS_QUERY)["assetNodes"]:
        key = "/".join(node["assetKey"]["path"])
        if node["groupName"] != "shop":
            continue  # the legacy CDC tables are not loaded in this test (no connector)
        for check in (node["assetChecksOrError"] or {}).get("checks", []):
            execution = check["executionForLatestMaterialization"]
            results[f"{key}:{check['name']}"] = execution and execution["status"]
            if key.startswith("warehouse/") and not execution:
                blank.append(f"{key}:{check['name']}")
    return blank, results


def test_launch_from_code_beside_the_daemon_keeps_checks_evaluated(page, dagster_ui):
    """The README's GraphQL launch, then a demo-style run beside the daemon's sensor run.

    Both runs reach the same streams: one waits for the other's checkpoint, and afterwards every
    table check shows a result for the table's latest load (none "Not evaluated").
    """
    from dagster_graphql import DagsterGraphQLClient

    instance = dagster_ui.instance
    host, port = dagster_ui.url.removeprefix("http://").split(":")
    client = DagsterGraphQLClient(host, port_number=int(port))
    config = {"count": 200, "seed": 5, "start_time": "2026-11-24T10:20:00Z"}
    run_id = client.submit_job_execution(
        "__ASSET_JOB",
        op_selection=["kafka__shop_events"],
        run_config={"ops": {"kafka__shop_events": {"config": config}}},
    )
    status = wait_for(
        "the produce run launched through GraphQL to finish",
        lambda: (
            s
            if (s := client.get_run_status(run_id))
            in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE)
            else None
        ),
        180,
        dagster_ui.log,
        interval=1,
    )
    assert status == dg.DagsterRunStatus.SUCCESS

    # What `make demo` does while `make dev` runs: tick and run in this process.
    tick = runner.tick(instance)
    in_process = [runner.run_request(instance, r) for r in getattr(tick, "run_requests", [])]
    assert all(r.success for r in in_process), [r.run_id for r in in_process if not r.success]

    wait_for("every run to finish", lambda: not _runs_in_flight(instance), 600, dagster_ui.log, 2)

    # The automation sensor follows a table's load with its checks a tick or two later (30 s
    # each): wait for that to settle rather than a fixed time, which a late run outlasted.
    def settled():
        if _runs_in_flight(instance):
            return None
        blank, results = _table_checks(dagster_ui)
        return None if blank else results

    results = wait_for(
        "every table check to have a result for its table's latest load",
        settled,
        180,
        dagster_ui.log,
        5,
    )
    waits = {
        k.to_user_string(): e.asset_materialization.metadata.get("waited_for_other_run_s")
        for k, e in instance.get_latest_materialization_events(
            [dg.AssetKey(["spark", "orders_events"]), dg.AssetKey(["spark", "page_views_events"])]
        ).items()
        if e
    }
    print(f"\nin-process runs: {len(in_process)}; latest stream waits: {waits}")
    failed = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
    assert not failed, [(r.run_id, r.job_name, r.tags) for r in failed]

    table_checks = {k: v for k, v in results.items() if k.startswith("warehouse/")}
    assert table_checks and set(table_checks.values()) == {"SUCCEEDED"}, table_checks

    page.goto("/assets/warehouse/orders?view=checks")
    for check in ("orders_unique_keys", "orders_events_reconciled"):
        entry = page.locator(f'[title="{check}"]').first.locator("xpath=..")
        expect(entry).to_contain_text("Succeeded")
    expect(page.get_by_text("Not evaluated")).to_have_count(0)
    shoot(page, "warehouse_orders_checks_after_concurrent_runs")


REPLAY_YAML = """ops:
  spark__orders_events:
    config:
      replay_from_timestamp: "{when}"
      reason: replayed from the launchpad
      requested_by: ui-test
"""


def test_replay_from_the_launchpad_shows_what_was_replayed(page, dagster_ui):
    """Replay orders from an hour back through the job's launchpad, as an operator would."""
    from datetime import UTC, datetime, timedelta

    instance = dagster_ui.instance
    when = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    before = {r.run_id for r in instance.get_runs()}

    page.goto(f"/locations/{LOCATION}/jobs/replay_orders/playground")
    editor = page.locator(".CodeMirror").first
    expect(editor).to_be_visible()
    page.evaluate(
        "(text) => document.querySelector('.CodeMirror').CodeMirror.setValue(text)",
        REPLAY_YAML.format(when=when),
    )
    launch = page.get_by_role("button", name="Launch run")
    expect(launch).to_be_enabled()
    launch.click()

    run = wait_for(
        "the replay run to finish",
        lambda: next(
            (
                r
                for r in instance.get_runs()
                if r.run_id not in before
                and r.job_name == "replay_orders"
                and r.status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE)
            ),
            None,
        ),
        600,
        dagster_ui.log,
        interval=2,
    )
    assert run.status == dg.DagsterRunStatus.SUCCESS, run.run_id
    event = instance.get_latest_materialization_event(dg.AssetKey(["spark", "orders_events"]))
    replay = event.asset_materialization.metadata["replay"].value
    assert replay["resolved_by"] == "offsetsForTimes"
    assert set(replay["start_offsets"].values()) == {0}  # an hour back: the whole log
    # The daemon's run replayed on the warm Spark Connect server, as under `make dev`.
    assert event.asset_materialization.metadata["spark_master"].value.startswith("sc://")

    page.goto("/assets/spark/orders_events")
    row = page.locator("tr", has_text="replay")
    expect(row.first).to_be_visible()
    expect(row.first).to_contain_text("replayed from the launchpad")
    expect(row.first).to_contain_text("ui-test")
    shoot(page, "spark_orders_events_replayed")
