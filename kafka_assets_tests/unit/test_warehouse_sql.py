"""Warehouse tables derived from the shop's YAML, their SQL as rendered text, and reconciliation."""

import pytest
from psycopg import sql

from kafka_assets.definitions import pipelines
from kafka_assets.warehouse.checks import reconcile
from kafka_assets.warehouse.io_manager import create_table_sql, fold_sql, overlapping, upsert_sql
from kafka_assets.warehouse.resources import PostgresResource
from kafka_assets.warehouse.tables import Table, quarantine_table

DECLARED = {p.table.name: p.table for pipeline in pipelines for p in pipeline.table_plans}
ORDERS = DECLARED["orders"]
PAGE_VIEWS = DECLARED["page_views"]
REVENUE_PER_MINUTE = DECLARED["revenue_per_minute"]
PAGE_VIEW_COUNTS = DECLARED["page_view_counts"]
QUARANTINE = quarantine_table("quarantine")
ALL_TABLES = (ORDERS, PAGE_VIEWS, QUARANTINE, REVENUE_PER_MINUTE, PAGE_VIEW_COUNTS)
WAREHOUSE = PostgresResource(dsn="postgresql://unused", schema_name="shop")


def render(composed: sql.Composable) -> str:
    """Render without a connection: psycopg >= 3.2 accepts a None context for plain SQL."""
    return composed.as_string(None)


def quoted(names) -> str:
    return ", ".join(f'"{n}"' for n in names)


# -- DDL and upserts ------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ALL_TABLES, ids=lambda s: s.name)
def test_create_table_sql(spec: Table) -> None:
    text = render(create_table_sql(spec, WAREHOUSE.table(spec.name)))

    assert text.startswith(f'CREATE TABLE IF NOT EXISTS "shop"."{spec.name}" (')
    for column in spec.columns:
        assert f'"{column.name}" {column.pg_type}' in text
    assert "_loaded_at timestamptz NOT NULL DEFAULT now()" in text
    assert text.endswith(f"PRIMARY KEY ({quoted(spec.primary_key)}))")


@pytest.mark.parametrize("spec", ALL_TABLES, ids=lambda s: s.name)
def test_upsert_sql_is_one_row_per_key_with_on_conflict(spec: Table) -> None:
    incoming = sql.Identifier(f"_incoming_{spec.name}")
    text = render(upsert_sql(spec, WAREHOUSE.table(spec.name), incoming))

    cols, pk = quoted(spec.column_names), quoted(spec.primary_key)
    assert text.startswith(f'INSERT INTO "shop"."{spec.name}" AS t ({cols}) ')
    assert f'SELECT DISTINCT ON ({pk}) {cols} FROM "_incoming_{spec.name}" ORDER BY {pk}' in text
    assert f"ON CONFLICT ({pk}) DO UPDATE SET " in text
    for name in spec.column_names:
        assignment = f'"{name}" = EXCLUDED."{name}"'
        # Key columns identify the row; every other column takes the incoming value.
        assert (assignment in text) == (name not in spec.primary_key), name
    assert "_loaded_at = now()" in text


def test_orders_upsert_never_lets_an_older_event_win() -> None:
    text = render(upsert_sql(ORDERS, WAREHOUSE.table("orders"), sql.Identifier("_incoming_orders")))

    # Within a batch the newest event per order is picked ...
    assert 'ORDER BY "order_id", "event_time" DESC, "source_offset" DESC ON CONFLICT' in text
    # ... and it replaces the stored row only if it is at least as new.
    assert text.endswith(
        'WHERE (t."event_time", t."source_offset")'
        ' <= (EXCLUDED."event_time", EXCLUDED."source_offset")'
    )


@pytest.mark.parametrize("spec", [PAGE_VIEWS, QUARANTINE, REVENUE_PER_MINUTE, PAGE_VIEW_COUNTS])
def test_other_upserts_have_no_recency_guard(spec: Table) -> None:
    text = render(upsert_sql(spec, WAREHOUSE.table(spec.name), sql.Identifier("_incoming")))
    assert " WHERE " not in text
    assert text.endswith("_loaded_at = now()")


def test_identifiers_are_quoted_not_interpolated() -> None:
    hostile = PostgresResource(dsn="postgresql://unused", schema_name='x"; DROP TABLE y; --')
    text = render(create_table_sql(ORDERS, hostile.table("orders")))
    assert text.startswith('CREATE TABLE IF NOT EXISTS "x""; DROP TABLE y; --"."orders" (')


# -- reconciliation -------------------------------------------------------------------------------


def test_reconcile_passes_for_contiguous_ranges_reaching_the_end() -> None:
    # Partition 0: batch 0 split over the valid and the quarantine table, then batch 1.
    ledger = [
        ("q", 0, "0", 0, 99, 90),
        ("q", 0, "0", 3, 97, 10),
        ("q", 1, "0", 100, 149, 50),
        ("q", 0, "1", 0, 9, 10),
    ]

    ok, per = reconcile(ledger, {"0": 150, "1": 10, "2": 0})

    assert ok
    assert per["0"] == {
        "first": 0,
        "last": 149,
        "rows": 150,
        "covered": 150,
        "consumed_end": 150,
        "missing": 0,
        "batches": 2,
    }
    assert per["1"]["rows"] == per["1"]["covered"] == 10
    assert "2" not in per  # an empty partition needs no rows


def test_reconcile_accepts_a_stream_that_started_after_offset_zero() -> None:
    ok, per = reconcile([("q", 0, "0", 500, 599, 100)], {"0": 600})
    assert ok and per["0"]["covered"] == 100


def test_reconcile_fails_on_a_gap() -> None:
    ok, per = reconcile([("q", 0, "0", 0, 99, 100), ("q", 1, "0", 120, 149, 30)], {"0": 150})
    assert not ok
    assert per["0"]["gaps"] == ["100-119"]


def test_reconcile_fails_on_a_doubled_batch() -> None:
    ok, per = reconcile([("q", 0, "0", 0, 99, 100), ("q", 0, "0", 50, 99, 50)], {"0": 100})
    assert not ok
    assert per["0"]["batches_miscounted"] == ["0-99: 150 rows"]


def test_reconcile_accepts_a_replay_overlapping_earlier_batches() -> None:
    """A replay is a new query over offsets already landed: idempotent by position."""
    ledger = [("q1", 0, "0", 0, 149, 150), ("q2", 0, "0", 40, 149, 110)]
    ok, per = reconcile(ledger, {"0": 150})
    assert ok and per["0"]["batches"] == 2


def test_reconcile_accepts_only_acknowledged_loss() -> None:
    ledger = [("q", 0, "0", 0, 99, 100), ("q", 1, "0", 120, 149, 30)]
    ok, per = reconcile(ledger, {"0": 150}, lost={"0": [(100, 119)]})
    assert ok and per["0"]["acknowledged_lost"] == ["100-119"]
    ok, per = reconcile(ledger, {"0": 150}, lost={"0": [(100, 110)]})
    assert not ok and per["0"]["gaps"] == ["111-119"]


def test_reconcile_fails_when_consumed_beyond_what_landed() -> None:
    ok, per = reconcile([("q", 0, "0", 0, 99, 100)], {"0": 150})
    assert not ok
    assert per["0"]["missing"] == 50


def test_reconcile_fails_for_a_consumed_partition_with_no_rows() -> None:
    ok, per = reconcile([("q", 0, "0", 0, 9, 10)], {"0": 10, "1": 5})
    assert not ok
    assert per["1"]["rows"] == 0 and per["1"]["missing"] == 5


# -- tables derived from the YAML ----------------------------------------------------------------


def columns(table: Table) -> list[tuple[str, str]]:
    return [(c.name, c.pg_type) for c in table.columns]


def test_latest_table_columns_keys_and_order() -> None:
    assert columns(ORDERS) == [
        ("order_id", "text NOT NULL"),
        ("status", "text NOT NULL"),
        ("customer_id", "text NOT NULL"),
        ("items", "jsonb NOT NULL"),
        ("amount", "numeric(14,2) NOT NULL"),
        ("currency", "text NOT NULL"),
        ("event_time", "timestamptz NOT NULL"),
        ("event_id", "text NOT NULL"),
        ("source_partition", "integer NOT NULL"),
        ("source_offset", "bigint NOT NULL"),
    ]
    assert ORDERS.primary_key == ("order_id",)
    assert ORDERS.newer_than == ("event_time", "source_offset")
    assert ORDERS.offset_columns == ("source_partition", "source_offset")


def test_append_table_is_keyed_by_kafka_position() -> None:
    assert columns(PAGE_VIEWS) == [
        ("source_partition", "integer NOT NULL"),
        ("source_offset", "bigint NOT NULL"),
        ("event_id", "text NOT NULL"),
        ("session_id", "text NOT NULL"),
        ("user_id", "text"),
        ("page", "text NOT NULL"),
        ("referrer", "text"),
        ("event_time", "timestamptz NOT NULL"),
    ]
    assert PAGE_VIEWS.primary_key == ("source_partition", "source_offset")


def test_aggregate_tables_are_keyed_by_window_and_group() -> None:
    assert columns(REVENUE_PER_MINUTE) == [
        ("window_start", "timestamptz NOT NULL"),
        ("window_end", "timestamptz NOT NULL"),
        ("currency", "text NOT NULL"),
        ("revenue", "numeric"),
        ("orders", "bigint NOT NULL"),
    ]
    assert REVENUE_PER_MINUTE.primary_key == ("window_start", "currency")
    assert columns(PAGE_VIEW_COUNTS)[2:] == [
        ("page", "text NOT NULL"),
        ("views", "bigint NOT NULL"),
        ("sessions", "bigint NOT NULL"),
    ]
    assert PAGE_VIEW_COUNTS.offset_columns is None


def test_totals_the_warehouse_keeps_are_combined_not_replaced() -> None:
    """Revenue per minute is folded batch by batch; page view counts (approx_distinct) stay in
    a Spark stream's state and are replaced as they grow."""
    assert REVENUE_PER_MINUTE.fold == (("revenue", "sum"), ("orders", "count"))
    assert PAGE_VIEW_COUNTS.fold == ()
    incoming = sql.Identifier("_incoming_revenue_per_minute")
    text = render(fold_sql(REVENUE_PER_MINUTE, WAREHOUSE.table("revenue_per_minute"), incoming))

    assert "DISTINCT ON" not in text  # a batch's partial totals are one row per key already
    assert 'ON CONFLICT ("window_start", "currency") DO UPDATE SET ' in text
    assert (
        '"revenue" = COALESCE(t."revenue" + EXCLUDED."revenue", t."revenue", EXCLUDED."revenue")'
        in text
    )
    assert '"orders" = t."orders" + EXCLUDED."orders"' in text
    assert '"window_end" = EXCLUDED."window_end"' in text


def test_a_fold_leaves_out_only_the_ranges_already_counted() -> None:
    counted = {"0": [(0, 99), (150, 199)], "1": [(0, 49)]}
    # Partition 0 overlaps both counted ranges; partition 1 is new past 49; 2 was never counted.
    batch = {"0": [90, 160, 71], "1": [40, 80, 41], "2": [0, 9, 10]}
    assert overlapping(batch, counted) == ({"0": [(0, 99), (150, 199)], "1": [(0, 49)]}, False)
    # A batch inside what was counted (a replay's) brings nothing new.
    assert overlapping({"0": [10, 20, 11], "1": [0, 49, 50]}, counted)[1] is True
    # The gap between two counted ranges is new.
    assert overlapping({"0": [100, 149, 50]}, counted) == ({}, False)
