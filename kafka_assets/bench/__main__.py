"""python -m kafka_assets.bench: measure the orders pipeline beside its baselines, in one run.

Starts its own services under `.local/bench/` on free ports (the demo's are left alone),
produces the orders, then measures, in this order and on the same messages:
  1. a warm-up over a small first batch (Spark compiles the same plans once, for both runs),
     then the plain script once over every message, timed but not counted: the JVM's JIT
     compiles the hot path during its first million rows, as a long-running Spark's has;
  2. the streams and loads as a plain pyspark script (no Dagster), three times, alternating
  3. with the same selection materialized by Dagster, twice, so drift in the machine falls on
     both sides (each figure is the mean of its runs);
  4. COPY + merge of the same valid rows straight into PostgreSQL after each plain run (the
     fastest of the three is the baseline); a CHECKPOINT before every timed run;
  5. the offsets sensor over 10 topics x 12 partitions.
Writes `.local/bench/results.json` and PNG plots, prints one table, and with --readme rewrites
the figures section of README.md.
"""

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from kafka_assets.paths import LOCAL_DIR, PROJECT_ROOT

BENCH_DIR = LOCAL_DIR / "bench"
README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"
WARMUP_MESSAGES = 20_000
PLAIN_RUNS = 3
INSTANCE_YAML = "telemetry:\n  enabled: false\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orders_only(count: int, **kwargs) -> Iterator:
    """The shop generator's messages for the orders topic alone, `count` of them."""
    from kafka_assets.shop.generator import shop_stream

    sent = 0
    for message in shop_stream(count * 3, **kwargs):
        if message.topic != "orders":
            continue
        yield message
        sent += 1
        if sent == count:
            return


def machine() -> dict[str, object]:
    memory = 0
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) // 1024 // 1024
    return {
        "cores": os.cpu_count(),
        "memory_gib": memory,
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kafka_assets.bench", description=__doc__)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--malformed-fraction", type=float, default=0.01)
    parser.add_argument("--trickles", type=int, default=20, help="freshness trickles (0: skip)")
    parser.add_argument("--trickle-size", type=int, default=100)
    parser.add_argument(
        "--backlog", type=int, default=10_000_000, help="messages in the backlog run (0: skip)"
    )
    parser.add_argument("--readme", action="store_true", help="rewrite README's figures")
    parser.add_argument("--keep-services", action="store_true")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)

    from kafka_assets.local.jars import BENCH_PROFILES, ensure_jars
    from kafka_assets.local.services import LocalServices

    ensure_jars(BENCH_PROFILES)  # before the worker starts: it finds its plugins then
    shutil.rmtree(BENCH_DIR, ignore_errors=True)
    BENCH_DIR.mkdir(parents=True)
    services = LocalServices(
        state_dir=BENCH_DIR / "services",
        kafka_port=_free_port(),
        controller_port=_free_port(),
        pg_port=_free_port(),
        connect_port=_free_port(),
        source_pg_port=_free_port(),
        environ={k: v for k, v in os.environ.items() if k in {"WAREHOUSE_DSN"}},
    )
    endpoints = services.up()
    try:
        results = measure(endpoints.as_env({"WAREHOUSE_SCHEMA": "bench"}), args)
    finally:
        if not args.keep_services:
            services.down()
    out = BENCH_DIR / "results.json"
    out.write_text(json.dumps(results, indent=2))
    from kafka_assets.bench.report import plot, readme_section, table

    print()
    print(table(results))
    plots = plot(results, BENCH_DIR)
    print(f"\nresults    {out}")
    print(f"plots      {', '.join(str(p) for p in plots)}")
    if args.readme:
        readme = PROJECT_ROOT / "README.md"
        text = readme.read_text()
        head, _, rest = text.partition(README_START)
        _, _, tail = rest.partition(README_END)
        section = f"{README_START}\n{readme_section(results)}\n{README_END}"
        readme.write_text(head + section + tail)
        print(f"README     figures rewritten in {readme}")
    return 0


def measure(env: dict[str, str], args) -> dict[str, object]:
    from kafka_assets import runner
    from kafka_assets.bench.backlog import fill, measure_backlog
    from kafka_assets.bench.connect_sink import SchemaTopic, measure_sink
    from kafka_assets.bench.copy_merge import RowsCsv, checkpoint, copy_and_merge
    from kafka_assets.bench.freshness import measure_freshness
    from kafka_assets.bench.plain import run_pipeline
    from kafka_assets.bench.sensor_tick import measure_ticks
    from kafka_assets.definitions import pipelines
    from kafka_assets.kafka.producer import ProduceConfig, produce
    from kafka_assets.kafka.resources import KafkaResource
    from kafka_assets.local.spark_cluster import SparkConnectServer
    from kafka_assets.spark.resources import StreamingSettings, build_pyspark_resource
    from kafka_assets.warehouse.resources import PostgresResource

    pipeline = next(p for p in pipelines if p.topic.name == "orders")
    env["DAGSTER_HOME"] = str(BENCH_DIR / "dagster_home")
    Path(env["DAGSTER_HOME"]).mkdir(parents=True)
    Path(env["DAGSTER_HOME"], "dagster.yaml").write_text(INSTANCE_YAML)
    os.environ.update(env)
    kafka = KafkaResource(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    spark = build_pyspark_resource().spark_session

    def point_runs_at(name: str) -> None:
        """Dagster runs in this process use their own schema, checkpoints and staging."""
        env.update(
            {
                "WAREHOUSE_SCHEMA": f"bench_{name}",
                "SPARK_CHECKPOINT_BASE": str(BENCH_DIR / name / "checkpoints"),
                "SPARK_STAGING_BASE": str(BENCH_DIR / name / "staging"),
            }
        )
        os.environ.update(env)

    def settings(name: str) -> tuple[StreamingSettings, PostgresResource]:
        return (
            StreamingSettings(
                checkpoint_base=str(BENCH_DIR / name / "checkpoints"),
                staging_base=str(BENCH_DIR / name / "staging"),
            ),
            PostgresResource(dsn=env["WAREHOUSE_DSN"], schema_name=f"bench_{name}"),
        )

    topic = pipeline.topic
    kafka.ensure_topic(topic.name, topic.partitions, topic.replication_factor, topic.config())
    freshness = None
    if args.trickles:
        # The daemon's runs use a warm Spark: a Connect server that stays up between runs. It
        # stops before the throughput figures, which run Spark in this process.
        server = SparkConnectServer(BENCH_DIR / "spark-connect", port=_free_port())
        server.start()
        print(f"freshness  {args.trickles} trickles of {args.trickle_size} under dagster-daemon")
        try:
            freshness = measure_freshness(
                env,
                BENCH_DIR / "freshness",
                orders_only,
                topic.name,
                [t.table.name for t in pipeline.table_plans if t.spec.mode != "aggregate"]
                + [pipeline.quarantine.table],
                trickles=args.trickles,
                size=args.trickle_size,
                spark_master=server.url,
            )
        finally:
            server.stop()

    def total() -> int:
        return sum(kafka.end_offsets([topic.name])[topic.name].values())

    # The same valid rows go to a CSV for COPY + merge as they are produced.
    orders_table = next(t.table for t in pipeline.table_plans if t.spec.mode == "latest")
    rows_csv = RowsCsv(orders_table, BENCH_DIR / "copy_rows.csv")
    # ... and, for the Kafka Connect sink, to a topic in JsonConverter's schema-and-payload form.
    schema_topic = SchemaTopic(kafka, orders_table, topic.partitions)
    value_bytes = [0]
    template: dict = {}

    def recorded(count: int, **kwargs) -> Iterator:
        for message in orders_only(count, **kwargs):
            value_bytes[0] += len(message.value)
            if not message.malformed:
                doc = json.loads(message.value)
                rows_csv.add(doc)
                schema_topic.send(message.key, doc)
                template.update(doc)
            yield message

    start = "2026-11-24T00:00:00+00:00"
    config = dict(start_time=start, malformed_fraction=args.malformed_fraction)
    produce(kafka, recorded, [topic.name], ProduceConfig(count=WARMUP_MESSAGES, seed=7, **config))
    print(f"warm-up    {WARMUP_MESSAGES} messages, plain script", flush=True)
    streaming, warehouse = settings("warmup")
    run_pipeline(spark, pipeline, kafka, streaming, warehouse)

    value_bytes[0] = 0
    main_batch = ProduceConfig(count=args.messages, seed=1, **config)
    sent = produce(kafka, recorded, [topic.name], main_batch)
    rows_csv.close()
    schema_topic.close(template)
    messages = total()
    bytes_total = value_bytes[0]
    print(
        f"produce    {args.messages} messages in {sent['elapsed_s']:.1f}s (the Python generator "
        f"sets the pace), {bytes_total / args.messages:.0f} B each",
        flush=True,
    )

    print(f"cold       {messages} messages, the plain script once to warm the JIT", flush=True)
    streaming, warehouse = settings("cold")
    cold = run_pipeline(spark, pipeline, kafka, streaming, warehouse)

    # Plain and Dagster runs alternate, three and two, so drift in the machine falls on both.
    instance = dg.DagsterInstance.get()
    selection = [s.key for s in pipeline.streams] + [t.key for t in pipeline.table_plans]
    selection.append(pipeline.quarantine_key)
    # COPY + merge runs between them too: PostgreSQL's state (its WAL, its cache) drifts over
    # the session as much as Spark's, and every timed run starts after a CHECKPOINT.
    plains, dagsters, dagster_steps, copies = [], [], [], []
    _, copy_wh = settings("copy")
    checkpointed = checkpoint(copy_wh)
    for i in range(PLAIN_RUNS):
        print(f"plain      {messages} messages, streams then loads, no Dagster", flush=True)
        streaming, warehouse = settings(f"plain_{i}")
        checkpoint(copy_wh)
        plains.append(run_pipeline(spark, pipeline, kafka, streaming, warehouse))
        print("copy       the same valid rows, COPY + merge into PostgreSQL", flush=True)
        checkpoint(copy_wh)
        copies.append(copy_and_merge(copy_wh, orders_table, rows_csv.path))
        if i == PLAIN_RUNS - 1:
            break
        print(f"dagster    {messages} messages, the same selection materialized", flush=True)
        point_runs_at(f"dagster_{i}")
        checkpoint(copy_wh)
        began = time.monotonic()
        result = runner.materialize(instance, selection, checks=[])
        dagsters.append(time.monotonic() - began)
        if not result.success:
            raise RuntimeError("the Dagster run of the benchmark failed; see the instance's logs")
        dagster_steps.append(_step_times(instance, selection))
        _, dagster_wh = settings(f"dagster_{i}")
        counts = {"plain": _counts(warehouse, pipeline), "dagster": _counts(dagster_wh, pipeline)}
        if counts["plain"] != counts["dagster"]:
            raise RuntimeError(f"the plain script and Dagster loaded different rows: {counts}")
    plain_s = statistics.mean(p.seconds for p in plains)
    dagster_s = statistics.mean(dagsters)

    # The fastest COPY + merge: the physical limit at its best, the strictest baseline.
    copy_rows, copy_s = rows_csv.rows, min(copies)
    rows_csv.path.unlink()

    print("connect    the same rows through Debezium's JDBC sink on Kafka Connect", flush=True)
    sink = measure_sink(
        env["CONNECT_URL"],
        env["WAREHOUSE_DSN"],
        orders_table,
        topic.partitions,
        schema_topic.rows - topic.partitions,
    )

    print("sensor     10 topics x 12 partitions", flush=True)
    ticks = measure_ticks(instance, kafka)

    backlog = None
    if args.backlog:
        more = max(0, args.backlog - total())
        print(
            f"backlog    {more} more messages, then one run over all {total() + more}", flush=True
        )
        fill_s = fill(kafka, topic.name, orders_only, more)
        print(f"           sent in {fill_s:.0f}s", flush=True)
        point_runs_at("backlog")
        gateway = getattr(spark.sparkContext, "_gateway", None)
        backlog = measure_backlog(
            instance,
            runner.materialize,
            selection,
            pipeline.events.key,
            BENCH_DIR / "backlog" / "staging",
            getattr(getattr(gateway, "proc", None), "pid", None),
            total(),
        )

    e2e_rate = messages / dagster_s
    copy_rate = copy_rows / copy_s
    return {
        "machine": machine(),
        "messages": messages,
        "message_bytes": round(bytes_total / args.messages),
        "partitions": topic.partitions,
        "malformed_fraction": args.malformed_fraction,
        "produce_rate": round(args.messages / sent["elapsed_s"]),
        "e2e": {
            "dagster_s": round(dagster_s, 2),
            "rows_per_s": round(e2e_rate),
            "copy_merge_rows": copy_rows,
            "copy_merge_s": round(copy_s, 2),
            "copy_merge_runs_s": [round(c, 2) for c in copies],
            "checkpointed": checkpointed,
            "copy_merge_rows_per_s": round(copy_rate),
            "ratio_to_copy_merge": round(e2e_rate / copy_rate, 3),
            "cold_plain_s": round(cold.seconds, 2),
            "goal": ">= 0.5",
        },
        "connect_sink": {**sink, "ratio_pipeline_to_sink": round(e2e_rate / sink["rows_per_s"], 3)},
        "overhead": {
            "plain_s": round(plain_s, 2),
            "plain_runs_s": [round(p.seconds, 2) for p in plains],
            "dagster_s": round(dagster_s, 2),
            "dagster_runs_s": [round(d, 2) for d in dagsters],
            "ratio": round(dagster_s / plain_s, 3),
            "goal": "<= 1.15",
        },
        "steps": {
            "plain": {
                k: round(statistics.mean(p.steps[k] for p in plains), 2) for k in plains[0].steps
            },
            "dagster": {
                k: round(statistics.mean(d[k] for d in dagster_steps), 2) for k in dagster_steps[0]
            },
        },
        "rows": counts["dagster"],
        "sensor_tick": {**ticks, "goal": "<= 100 ms"},
        "freshness": freshness,
        "backlog": backlog,
    }


def _step_times(instance: dg.DagsterInstance, keys) -> dict[str, float]:
    """Each asset's step duration in the latest run, from the instance's step stats."""
    out = {}
    for key, event in instance.get_latest_materialization_events(keys).items():
        if event is None:
            continue
        stats = instance.get_run_step_stats(event.run_id)
        step = event.step_key
        for s in stats:
            if s.step_key == step and s.end_time and s.start_time:
                out[key.to_user_string()] = round(s.end_time - s.start_time, 2)
    return out


def _counts(warehouse, pipeline) -> dict[str, int]:
    from psycopg import sql

    names = [t.table.name for t in pipeline.table_plans] + [pipeline.quarantine.table]
    with warehouse.connect() as conn:
        return {
            n: conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(warehouse.table(n))
            ).fetchone()[0]
            for n in names
        }


if __name__ == "__main__":
    raise SystemExit(main())
