"""Produce to queryable, as a user gets it: the Dagster daemon, its sensors, its run launcher.

A `dagster-daemon` runs the project's code location with the offsets sensor RUNNING (its
default), on the instance settings `make dev` writes, and its runs use a warm Spark: the Spark
Connect server named by `spark_master`. Each trickle is a small produce; its latency runs from
the last acknowledgement to the moment the warehouse ledger shows every produced offset loaded
into the orders table or the quarantine, that is, when a query can see each message.
"""

import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from psycopg import sql

from kafka_assets.kafka.producer import ProduceConfig, produce
from kafka_assets.kafka.resources import KafkaResource
from kafka_assets.local.services import write_dagster_yaml
from kafka_assets.spark.resources import LOCAL_MASTER
from kafka_assets.warehouse.resources import PostgresResource
from kafka_assets.warehouse.tables import LEDGER

WORKSPACE = """load_from:
  - python_module:
      module_name: kafka_assets.definitions
"""


def loaded_up_to(warehouse: PostgresResource, tables: list[str]) -> dict[int, int]:
    """Per partition, the highest offset any batch of `tables` has loaded (from the ledger)."""
    query = sql.SQL(
        "SELECT p.key::int, max((p.value->>1)::bigint) FROM {}, jsonb_each(offsets) AS p"
        " WHERE target_table = ANY(%s) GROUP BY 1"
    ).format(warehouse.table(LEDGER))
    try:
        with warehouse.connect() as conn:
            return {int(p): int(o) for p, o in conn.execute(query, (tables,)).fetchall()}
    except Exception:  # noqa: BLE001 - the ledger does not exist before the first load
        return {}


def measure_freshness(
    env: dict[str, str],
    work: Path,
    generator,
    topic: str,
    tables: list[str],
    trickles: int = 20,
    size: int = 100,
    spacing_s: tuple[float, float] = (2.0, 8.0),
    timeout_s: float = 300.0,
    spark_master: str = "",
    warmup: int = 3,
) -> dict[str, object]:
    """`warmup` trickles run first and are reported, not counted: the goal is for a warm Spark,
    and a server's first queries of each plan wait for the JIT."""
    work.mkdir(parents=True, exist_ok=True)
    home = work / "dagster_home"
    write_dagster_yaml(home, postgres=False)
    (work / "workspace.yaml").write_text(WORKSPACE)
    daemon_env = {
        **os.environ,
        **env,
        "DAGSTER_HOME": str(home),
        "WAREHOUSE_SCHEMA": "bench_fresh",
        "SPARK_CHECKPOINT_BASE": str(work / "checkpoints"),
        "SPARK_STAGING_BASE": str(work / "staging"),
        "SPARK_MASTER": spark_master or env.get("SPARK_MASTER") or LOCAL_MASTER,
    }
    kafka = KafkaResource(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    warehouse = PostgresResource(dsn=env["WAREHOUSE_DSN"], schema_name="bench_fresh")
    daemon = Path(sys.executable).parent / "dagster-daemon"
    log = open(work / "daemon.log", "ab")
    proc = subprocess.Popen(
        [str(daemon), "run", "-w", str(work / "workspace.yaml")],
        cwd=work,  # not the project root: its .env points at the demo's services
        env=daemon_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    latencies: list[float] = []
    warmups: list[float] = []
    pauses = random.Random(20261201)
    try:
        # What the topic already holds is loaded first (the daemon's first run), untimed.
        _wait_loaded(warehouse, tables, kafka.end_offsets([topic])[topic], timeout_s, proc)
        for i in range(warmup + trickles):
            produce(
                kafka,
                generator,
                [topic],
                ProduceConfig(count=size, seed=1000 + i, malformed_fraction=0.0),
            )
            acked = time.monotonic()
            ends = kafka.end_offsets([topic])[topic]
            _wait_loaded(warehouse, tables, ends, timeout_s, proc)
            took = time.monotonic() - acked
            if i < warmup:
                warmups.append(took)
                print(f"           warm-up {i + 1}/{warmup}: {took:.1f}s (not counted)", flush=True)
            else:
                latencies.append(took)
                print(f"           trickle {len(latencies)}/{trickles}: {took:.1f}s", flush=True)
            # A random pause, so produces land at every phase of the daemon's 5 s sensor loop:
            # a fixed pause would meet the loop at the same point each time.
            time.sleep(pauses.uniform(*spacing_s))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    ordered = sorted(latencies)
    return {
        "trickles": len(latencies),
        "messages_each": size,
        "p50_s": round(statistics.median(ordered), 2),
        "p95_s": round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 2),
        "max_s": round(ordered[-1], 2),
        "all_s": [round(v, 2) for v in latencies],
        "warmup_s": [round(v, 2) for v in warmups],
        "spark_master": daemon_env["SPARK_MASTER"],
        "goal": "p50 <= 10 s, p95 <= 20 s",
    }


def _wait_loaded(warehouse, tables, ends: dict[int, int], timeout_s: float, proc) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        loaded = loaded_up_to(warehouse, tables)
        if all(loaded.get(p, -1) >= end - 1 for p, end in ends.items() if end > 0):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"dagster-daemon exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not loaded within {timeout_s:.0f}s: {ends} vs {loaded}")
        time.sleep(0.25)
