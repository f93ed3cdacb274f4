"""`python -m kafka_assets.demo`: every declared pipeline once, end to end, on the local stack.

Starts the services, creates the topics, produces the example stream, evaluates the offsets
sensor, runs what it requests (streams, tables, checks) and prints what landed where. Run it again
and only the new offsets are processed. Everything is recorded in the Dagster instance under
DAGSTER_HOME, so `make dev` shows the same runs, metadata and checks, and its sensor starts from
what the demo processed: it launches no run until new messages arrive.
"""

import argparse
import json
import os
import sys
import time
import warnings

import dagster as dg


def _ok(result: dg.ExecuteInProcessResult) -> dg.ExecuteInProcessResult:
    if not result.success:
        failures = [e.message for e in result.all_events if e.is_failure]
        raise SystemExit(f"run {result.run_id} failed: {failures[:3]}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kafka_assets.demo", description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000, help="messages to produce")
    parser.add_argument("--malformed-fraction", type=float, default=0.01)
    args = parser.parse_args(argv)
    # Dagster's notes that component APIs are beta or preview are for developers of this
    # project (pytest shows them), not for a person watching the demo.
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)

    from kafka_assets.local.services import LocalServices, write_env_file

    timings: dict[str, float] = {}
    t0 = time.monotonic()
    services = LocalServices.from_env()
    endpoints = services.up()
    env = endpoints.as_env(services.environ)
    os.environ.update(env)
    write_env_file(env)
    timings["services"] = time.monotonic() - t0
    print(
        f"services   Kafka {endpoints.bootstrap_servers}, PostgreSQL ready, "
        f"Kafka Connect {endpoints.connect_url}",
        flush=True,
    )

    from kafka_assets import runner
    from kafka_assets.definitions import cdc_sources, defs, pipelines
    from kafka_assets.warehouse.report import table_summary
    from kafka_assets.warehouse.resources import PostgresResource

    instance = dg.DagsterInstance.get()
    stage = time.monotonic()
    _ok(runner.materialize(instance, [p.topic_key for p in pipelines]))
    timings["topics"] = time.monotonic() - stage
    print(
        f"topics     {', '.join(p.topic.name for p in pipelines)} created or reconciled", flush=True
    )

    # Every producer the project declares (the shop's generator, in the example).
    graph = defs.resolve_asset_graph()
    producers = [
        defs.resolve_assets_def(k)
        for k in graph.get_all_asset_keys()
        if "kafka/generator" in graph.get(k).metadata
    ]
    produced: dict[str, dict] = {"per_topic": {}, "malformed_sent": {}}
    stage = time.monotonic()
    for producer in producers:
        config = {"count": args.messages, "malformed_fraction": args.malformed_fraction}
        result = _ok(
            runner.materialize(
                instance,
                [producer.key],
                run_config={"ops": {producer.node_def.name: {"config": config}}},
            )
        )
        md = result.asset_materializations_for_node(producer.node_def.name)[0].metadata
        for field in produced:
            produced[field].update(md[field].value)
    timings["produce"] = time.monotonic() - stage
    print(f"produce    {sum(produced['per_topic'].values())} messages acknowledged", flush=True)

    if cdc_sources:
        stage = time.monotonic()
        _cdc_changes(instance, env)
        timings["cdc_connector_and_changes"] = time.monotonic() - stage

    stage = time.monotonic()
    tick = runner.tick(instance)
    timings["sensor_tick"] = time.monotonic() - stage
    if isinstance(tick, dg.SkipReason):
        print(f"sensor: {tick.skip_message}")
        return 0

    checks: dict[str, bool] = {}
    stage = time.monotonic()
    for request in tick.run_requests:
        print(
            f"sensor     run {request.run_key}: {len(request.asset_selection)} assets, "
            f"{len(request.asset_check_keys or ())} checks (streams, tables, checks) ...",
            flush=True,
        )
        checks.update(runner.check_results(_ok(runner.run_request(instance, request))))
    timings["streams_tables_checks"] = time.monotonic() - stage

    print()
    print(
        f"produced   {json.dumps(produced['per_topic'])}  "
        f"malformed sent {json.dumps(produced['malformed_sent'])}\n"
    )
    warehouse = PostgresResource(dsn=env["WAREHOUSE_DSN"], schema_name=env["WAREHOUSE_SCHEMA"])
    tables = [t.name for p in pipelines for t in p.tables]
    quarantines = sorted({p.quarantine.table for p in pipelines})
    print(table_summary(warehouse, tables, quarantines))
    if cdc_sources:
        print()
        print(_cdc_summary(env, warehouse, checks))
    print()
    print("checks     " + ", ".join(f"{k}={'PASS' if ok else 'FAIL'}" for k, ok in checks.items()))
    print("timings    " + ", ".join(f"{k}={v:.1f}s" for k, v in timings.items()))
    host = os.environ.get("KAFKA_ASSETS_UI_HOST", "127.0.0.1")
    port = os.environ.get("KAFKA_ASSETS_UI_PORT", "3000")
    first = f"{env['WAREHOUSE_SCHEMA']}.{tables[0]}" if tables else "information_schema.tables"
    print(f"\nnext       make dev, then http://{host}:{port}  (lineage, runs, checks, sensors)")
    print(f"           psql '{env['WAREHOUSE_DSN']}' -c 'select * from {first} limit 5'")
    print("           make demo again: only the new offsets are processed; make services-down")
    return 0 if all(checks.values()) else 1


def _cdc_changes(instance: dg.DagsterInstance, env: dict[str, str]) -> None:
    """The connector, then a few inserts, updates and deletes in the legacy database, and a wait
    until Debezium has put them all in Kafka (the slot confirmed the source's WAL position)."""
    from kafka_assets import runner
    from kafka_assets.cdc.connect import SourceDatabaseResource
    from kafka_assets.definitions import cdc_sources

    for source in cdc_sources:
        result = _ok(runner.materialize(instance, [source.connector_key]))
        md = result.asset_materializations_for_node("__".join(source.connector_key.path))[0]
        meta = md.metadata
        print(
            f"connector  {source.connector.name} {meta['connector_state'].value} after "
            f"{meta['running_after_s'].value:.1f}s on {meta['worker_id'].value}, slot "
            f"{source.connector.slot_name} at {meta['confirmed_flush_lsn'].value}",
            flush=True,
        )
    db = SourceDatabaseResource(dsn=env["SOURCE_DSN"])
    first = int(time.time()) % 1_000_000 * 10 + 1_000_000  # new ids on every demo run
    statements = [
        (
            "INSERT INTO shop.customers (customer_id, email, full_name) VALUES (%s, %s, %s)",
            [(first + i, f"demo{first + i}@example.com", f"Demo customer {i}") for i in range(3)],
        ),
        (
            "UPDATE shop.customers SET full_name = full_name || ' (vip)' WHERE customer_id = %s",
            [(first,)],
        ),
        ("DELETE FROM shop.customers WHERE customer_id = %s", [(first + 2,)]),
        (
            "INSERT INTO shop.products (product_id, sku, name, price) VALUES (%s, %s, %s, %s)",
            [(first + i, f"DEMO-{first + i}", f"Demo product {i}", 9.99 + i) for i in range(2)],
        ),
        ("UPDATE shop.products SET price = price * 2 WHERE product_id = %s", [(first,)]),
        ("DELETE FROM shop.products WHERE product_id = %s", [(first + 1,)]),
        (
            "INSERT INTO shop.orders (order_id, customer_id, product_id, quantity)"
            " VALUES (%s, %s, %s, %s)",
            [(first, first, first, 2), (first + 1, first + 1, first, 1)],
        ),
        ("UPDATE shop.orders SET status = 'paid' WHERE order_id = %s", [(first,)]),
    ]
    changes = 0
    with db.connect() as conn:
        for statement, rows in statements:
            for row in rows:
                conn.execute(statement, row)
                changes += 1
    waited = max(
        db.wait_caught_up(source.connector.slot_name, timeout_s=120) for source in cdc_sources
    )
    print(
        f"legacy     {changes} changes (inserts, updates, deletes) in the legacy shop; "
        f"Debezium caught up in {waited:.1f}s",
        flush=True,
    )


def _cdc_summary(env: dict[str, str], warehouse, checks: dict[str, bool]) -> str:
    """Per mirror table: rows in the source and in the warehouse, and the equality check."""
    from psycopg import sql

    from kafka_assets.cdc.connect import SourceDatabaseResource
    from kafka_assets.definitions import cdc_sources

    db = SourceDatabaseResource(dsn=env["SOURCE_DSN"])
    lines = []
    with db.connect() as src, warehouse.connect() as wh:
        for source in cdc_sources:
            for captured in source.captured:
                spec = captured.spec
                src_rows = src.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(
                        sql.Identifier(source.source.schema_name, spec.name)
                    )
                ).fetchone()[0]
                query = sql.SQL("SELECT count(*) FROM {}").format(warehouse.table(spec.table))
                if spec.delete.column:  # soft-deleted rows are not in the source any more
                    query += sql.SQL(" WHERE NOT {}").format(sql.Identifier(spec.delete.column))
                wh_rows = wh.execute(query).fetchone()[0]
                key = f"{captured.mirror_key.to_user_string()}:{spec.table}_matches_source"
                verdict = {True: "PASS", False: "FAIL", None: "not run"}[checks.get(key)]
                lines.append(
                    f"cdc        {source.source.schema_name}.{spec.name}: source {src_rows} rows, "
                    f"{warehouse.schema_name}.{spec.table} {wh_rows} rows "
                    f"({spec.delete.mode} deletes)  matches_source={verdict}"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
