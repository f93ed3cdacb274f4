"""Pipelines as YAML: one new file adds its whole lineage; mistakes name the file and field."""

import os
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest
from pyspark.sql import functions as F

from kafka_assets.definitions import PipelineConflict, build_definitions
from kafka_assets.lib.pipeline.component import SCAFFOLD, PipelineScaffolder
from kafka_assets_tests.pipelines import HERE, defs_package

ROOT = Path(__file__).resolve().parents[2]
PAYMENTS = HERE / "payments.yaml"


def key(path: str) -> dg.AssetKey:
    return dg.AssetKey(path.split("/"))


def edges(defs: dg.Definitions) -> set[tuple[str, str]]:
    graph = defs.resolve_asset_graph()
    return {
        (parent.to_user_string(), child.to_user_string())
        for parent in graph.get_all_asset_keys()
        for child in graph.get(parent).child_keys
    }


@pytest.fixture(scope="module")
def with_payments(tmp_path_factory):
    package = defs_package(tmp_path_factory.mktemp("proj"), {"payments": PAYMENTS}, with_shop=True)
    return build_definitions(package)


def test_one_yaml_file_adds_topic_stream_and_tables(with_payments, tmp_path) -> None:
    defs, pipelines = with_payments
    shop, _ = build_definitions(defs_package(tmp_path, {}, with_shop=True))

    assert {p.topic.name for p in pipelines} == {"orders", "page_views", "payments"}
    added = edges(defs) - edges(shop)
    assert added == {
        ("kafka/payments", "spark/payments_events"),
        ("kafka/payments", "spark/captured_per_minute"),
        ("spark/payments_events", "warehouse/payments"),
        ("spark/payments_events", "warehouse/payment_events"),
        ("spark/payments_events", "warehouse/quarantine"),  # the shared quarantine grew an input
        ("spark/captured_per_minute", "warehouse/captured_per_minute"),
    }
    assert edges(shop) <= edges(defs)  # nothing of the shop changed


def test_checks_and_sensor_targets_follow_the_new_pipeline(with_payments) -> None:
    defs, _ = with_payments
    graph = defs.resolve_asset_graph()
    new_checks = {c for c in graph.asset_check_keys if "payment" in c.asset_key.to_user_string()}
    assert new_checks == {
        dg.AssetCheckKey(key("kafka/payments"), "consumer_lag"),
        dg.AssetCheckKey(key("kafka/payments"), "partitions_as_declared"),
        dg.AssetCheckKey(key("kafka/payments"), "unread_not_deleted"),
        dg.AssetCheckKey(key("warehouse/payments"), "payments_events_reconciled"),
        dg.AssetCheckKey(key("warehouse/payments"), "payments_unique_keys"),
    }

    from kafka_assets_tests.fakes import FakeKafka

    kafka = FakeKafka()
    for topic, partitions in (("orders", 1), ("page_views", 1), ("payments", 4)):
        kafka.create(topic, partitions)
    kafka.append("payments", 3, 2)
    sensor = defs.resolve_sensor_def("kafka_offsets_sensor")
    context = dg.build_sensor_context(
        instance=dg.DagsterInstance.ephemeral(), resources={"kafka": kafka}
    )
    (request,) = sensor(context).run_requests
    assert set(request.asset_selection) == {
        key("kafka/payments"),  # re-described, so its page shows the offsets of this run
        key("spark/payments_events"),
        key("spark/captured_per_minute"),
        key("warehouse/payments"),
        key("warehouse/payment_events"),
        key("warehouse/captured_per_minute"),
        key("warehouse/quarantine"),
    }
    assert dg.AssetCheckKey(key("warehouse/payments"), "payments_unique_keys") in set(
        request.asset_check_keys
    )


def test_metadata_comes_from_the_yaml(with_payments) -> None:
    defs, _ = with_payments
    graph = defs.resolve_asset_graph()
    table = graph.get(key("warehouse/payments"))
    schema = table.metadata["dagster/column_schema"]
    assert [(c.name, c.type) for c in schema.columns][:3] == [
        ("payment_id", "text NOT NULL"),
        ("order_id", "text NOT NULL"),
        ("method", "text NOT NULL"),
    ]
    meta = next(c for c in schema.columns if c.name == "meta")
    assert (
        meta.type == "jsonb" and meta.description == "Free-form details from the payment provider."
    )
    assert graph.get(key("kafka/payments")).kinds == {"kafka"}
    # One group per domain folder under defs/: `payments/defs.yaml` is the payments domain.
    assert graph.get(key("spark/payments_events")).group_name == "payments"
    assert graph.get(key("warehouse/orders")).group_name == "shop"
    # The shared quarantine spans two domains, so it has a group of its own.
    assert graph.get(key("warehouse/quarantine")).group_name == "quarantine"
    assert graph.get(key("warehouse/captured_per_minute")).automation_condition is not None


PIPELINE = textwrap.dedent(
    """\
    type: kafka_assets.lib.KafkaPipeline
    attributes:
      topic: {{name: t1}}
      format:
        key: id
        event_time: at
        fields:
          id: {{type: string, required: true}}
          at: {{type: timestamp, required: true}}
          n: {{type: {n_type}}}
      tables:
        - {table}
    """
)


@pytest.mark.parametrize(
    ("n_type", "table", "message"),
    [
        ("decimal(14)", "{name: a, mode: append}", "field 'n': decimal needs (precision,scale)"),
        ("strng", "{name: a, mode: append}", "unknown type 'strng'"),
        ("int", "{name: a, mode: latest, key: [n]}", "key column 'n' must be a required field"),
        ("int", "{name: a, mode: latest, key: [nope]}", "key/order_by column 'nope'"),
        ("int", "{name: a, mode: append, columns: [zz]}", "column 'zz' is not a declared field"),
        ("int", "{name: a, mode: upsert}", "'append', 'latest' or 'aggregate'"),
        ("int", "{name: a, mode: aggregate}", "an aggregate needs `measures`"),
        (
            "int",
            "{name: a, mode: aggregate, group_by: [n], measures: [{name: c, agg: count}]}",
            "group_by column 'n' must be a required field",
        ),
        (
            "int",
            "{name: a, mode: aggregate, totals: warehouse, "
            "measures: [{name: d, agg: approx_distinct, column: id}]}",
            "measure 'd' (approx_distinct) cannot be added up batch by batch",
        ),
        ("int", "{name: a, mode: append, totals: stream}", "`totals` is only for mode aggregate"),
        (
            "int",
            "{name: a, mode: append, transform: {function: no.such.fn}}",
            "transform 'no.such.fn' cannot be imported",
        ),
    ],
)
def test_mistakes_are_named(tmp_path, n_type, table, message) -> None:
    text = PIPELINE.format(n_type=n_type, table=table)
    package = defs_package(tmp_path, {"bad": text})
    with pytest.raises(Exception) as excinfo:  # noqa: PT011 - Dagster wraps the cause
        build_definitions(package)
    chain, error = [], excinfo.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    assert any(message in text for text in chain), chain


def test_two_pipelines_cannot_claim_one_table(tmp_path) -> None:
    other = PAYMENTS.read_text().replace(
        "name: payments\n    partitions", "name: refunds\n    partitions"
    )
    package = defs_package(tmp_path, {"payments": PAYMENTS, "refunds": other})
    with pytest.raises(
        PipelineConflict,
        match="'payments' and of topic 'refunds'|'refunds' and of topic 'payments'",
    ):
        build_definitions(package)


def test_scaffolded_pipeline_builds(tmp_path) -> None:
    target = tmp_path / "scaffold" / "invoices"
    request = dg.ScaffoldRequest(
        type_name="kafka_assets.lib.KafkaPipeline",
        target_path=target,
        scaffold_format="yaml",
        project_root=tmp_path,
        params=None,
    )
    PipelineScaffolder().scaffold(request)
    text = (target / "defs.yaml").read_text()
    assert text == SCAFFOLD.format(type="kafka_assets.lib.KafkaPipeline", topic="invoices")

    defs, (pipeline,) = build_definitions(defs_package(tmp_path / "pkg", {"invoices": text}))
    assert pipeline.topic.name == "invoices"
    assert {t.name for t in pipeline.tables} == {
        "invoices_latest",
        "invoices_events",
        "invoices_per_minute",
    }
    dg.Definitions.validate_loadable(defs)


def test_a_custom_transform_adds_a_column(tmp_path, spark) -> None:
    text = PAYMENTS.read_text().replace(
        "      columns: [payment_id, status, amount, paid_at]\n",
        "      columns: [payment_id, amount, {name: amount_cents, type: long, required: true}]\n"
        "      transform: {function: kafka_assets_tests.pipelines.transforms.with_cents}\n",
    )
    _, (pipeline,) = build_definitions(defs_package(tmp_path, {"payments": text}))
    plan = next(p for p in pipeline.table_plans if p.table.name == "payment_events")
    assert [c.name for c in plan.table.columns][-1] == "amount_cents"

    from kafka_assets.warehouse.assets import valid_rows

    events = spark.createDataFrame(
        [(0, 5, "p-1", 12.34, None), (0, 6, None, None, "invalid JSON")],
        "partition int, offset long, payment_id string, amount double, error string",
    ).withColumn("amount", F.col("amount").cast("decimal(12,2)"))
    from kafka_assets_tests.pipelines.transforms import with_cents

    rows = valid_rows(plan.table, plan.spec.where, with_cents)(events).collect()
    assert [tuple(r) for r in rows] == [(0, 5, "p-1", Decimal("12.34"), 1234)]  # valid rows only


def _dg(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["VIRTUAL_ENV"] = str(bindir.parent)
    return subprocess.run(
        [str(bindir / "dg"), *args, "--use-active-venv"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_dg_check_defs_passes_on_the_project() -> None:
    proc = _dg("check", "defs", cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "All definitions loaded successfully" in proc.stdout + proc.stderr


def test_dg_check_defs_names_the_file_line_and_field(tmp_path) -> None:
    """A user's own dg project of pipeline YAML, built on kafka-assets, with one mistake."""
    project = tmp_path / "my_pipes_project"
    (project / "my_pipes" / "defs" / "payments").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[project]\nname = "my-pipes"\nversion = "0"\n\n[tool.dg]\ndirectory_type = "project"\n\n'
        '[tool.dg.project]\nroot_module = "my_pipes"\ndefs_module = "my_pipes.defs"\n'
    )
    (project / "my_pipes" / "__init__.py").write_text("")
    (project / "my_pipes" / "defs" / "__init__.py").write_text("")
    (project / "my_pipes" / "definitions.py").write_text(
        "import my_pipes.defs\nfrom kafka_assets.definitions import build_definitions\n\n"
        "defs, _ = build_definitions(my_pipes.defs)\n"
    )
    broken = PAYMENTS.read_text().replace('type: "decimal(12,2)"', 'type: "decimal(12)"')
    yaml_path = project / "my_pipes" / "defs" / "payments" / "defs.yaml"
    yaml_path.write_text(broken)

    proc = _dg("check", "defs", cwd=project)

    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"{yaml_path}:" in out  # the file, with the line of the block at fault
    assert "field 'amount': decimal needs (precision,scale)" in out


def test_a_quarantine_table_cannot_be_another_pipelines_table(tmp_path) -> None:
    other = (
        PAYMENTS.read_text()
        .replace("name: payments\n    partitions", "name: refunds\n    partitions")
        .replace("- name: payments\n", "- name: refunds_latest\n")
        .replace("name: payment_events", "name: refund_events")
        .replace("name: captured_per_minute", "name: refunds_per_minute")
        .replace("table: quarantine", "table: payments")
    )
    package = defs_package(tmp_path, {"payments": PAYMENTS, "refunds": other})
    with pytest.raises(PipelineConflict, match="quarantine table 'payments' of topic 'refunds'"):
        build_definitions(package)


def test_tables_carry_a_freshness_policy_unless_the_yaml_says_null(tmp_path) -> None:
    text = (
        PAYMENTS.read_text()
        .replace(
            "      columns: [payment_id, status, amount, paid_at]\n",
            "      columns: [payment_id, status, amount, paid_at]\n      freshness: null\n",
        )
        .replace(
            "      key: [payment_id]\n",
            "      key: [payment_id]\n"
            "      freshness: {warn_after_minutes: 5, fail_after_minutes: 30}\n",
        )
    )
    defs, _ = build_definitions(defs_package(tmp_path, {"payments": text}))
    graph = defs.resolve_asset_graph()
    latest = graph.get(key("warehouse/payments")).freshness_policy
    assert (
        latest.warn_window.to_timedelta().seconds,
        latest.fail_window.to_timedelta().seconds,
    ) == (
        300,
        1800,
    )
    assert graph.get(key("warehouse/payment_events")).freshness_policy is None
    assert graph.get(key("warehouse/captured_per_minute")).freshness_policy is not None  # default
    assert graph.get(key("warehouse/quarantine")).freshness_policy is None  # rejects are sporadic


def test_quarantine_names_must_be_plain_identifiers() -> None:
    from kafka_assets.spec import QuarantineSpec

    with pytest.raises(ValueError, match="quarantine table name 'q\"; drop' must be a plain"):
        QuarantineSpec(table='q"; drop')
    assert QuarantineSpec(table="rejects_2026").table == "rejects_2026"
