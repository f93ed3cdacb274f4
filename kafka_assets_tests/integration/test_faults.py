"""kill -9 at each step of a run, then a rerun: nothing lost, nothing doubled.

Each case runs the orders pipeline in a child process that SIGKILLs itself at one named point
(`kafka_assets.faults`), then re-executes the same selection in this process, as an operator
would, and counts independently: the orders table equals the latest state replayed from the
generator, quarantined rows per partition equal the malformed messages read back from Kafka, and
the reconciliation check passes. With the ledger deliberately broken the same case must fail.
"""

import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from kafka_assets import runner
from kafka_assets.faults import POINTS
from kafka_assets.local.services import write_dagster_yaml
from kafka_assets.paths import PROJECT_ROOT
from kafka_assets.shop.generator import GeneratorConfig, generate
from kafka_assets_tests.integration.test_pipeline import START, _expected, _produce

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# What the counts cover: every offset lands once in orders or the quarantine. The aggregate
# stream is left out (its replay is proven in test_replay.py): here it would only add Spark time.
SELECTION = [
    "kafka/orders",
    "spark/orders_events",
    "warehouse/orders",
    "warehouse/quarantine",
]
# Small micro-batches, so a kill in the middle of a stream leaves batches before and after it.
RUN_CONFIG = {
    "resources": {
        "streaming": {
            "config": {
                "checkpoint_base": {"env": "SPARK_CHECKPOINT_BASE"},
                "staging_base": {"env": "SPARK_STAGING_BASE"},
                "max_offsets_per_trigger": 120,
            }
        }
    }
}
COUNT, SEED = 800, 41
# The broker case: about 1200 orders messages; after the first half, 100/s.
BROKER_COUNT, PRODUCE_RATE = 2400, 100.0


def _start_child(
    env: dict, fault: str, log: Path, selection=SELECTION, break_ledger: bool = False
) -> subprocess.Popen:
    spec = json.dumps({"selection": selection, "run_config": RUN_CONFIG})
    child_env = {**os.environ, **env, "KAFKA_ASSETS_FAULT": fault}
    if break_ledger:
        child_env["KAFKA_ASSETS_BREAK_LEDGER"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "kafka_assets_tests.fault_run", spec],
        cwd=PROJECT_ROOT,
        env=child_env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def _child(env: dict, fault: str, tmp: Path, break_ledger: bool = False) -> int:
    proc = _start_child(env, fault, tmp / f"child-{fault}.log", break_ledger=break_ledger)
    return proc.wait(timeout=900)


def _read_back(bootstrap: str, topic: str = "orders") -> dict[tuple[int, int], bytes]:
    """Every message the topic holds, {(partition, offset): value}, read to each partition's end."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "fault-count", "enable.partition.eof": True}
    )
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        held, done = {}, set()
        while len(done) < len(parts):
            msg = consumer.poll(5)
            if msg is None:
                raise AssertionError(f"the {topic} topic did not reach its end")
            if msg.error():
                done.add(msg.partition())
                continue
            held[(msg.partition(), msg.offset())] = msg.value() or b""
        return held
    finally:
        consumer.close()


def _malformed_per_partition(bootstrap: str, count: int, seed: int) -> Counter:
    """Read the orders topic back and count, per partition, the messages the generator made
    malformed (matched by their bytes): an independent count of what quarantine must hold."""
    start = datetime.fromisoformat(START.replace("Z", "+00:00"))
    config = GeneratorConfig(seed=seed, malformed_fraction=0.02)
    bad = {m.value for m in generate(count, config, start) if m.malformed and m.topic == "orders"}
    return Counter(p for (p, _), value in _read_back(bootstrap).items() if value in bad)


def _reconciled(instance) -> tuple[bool, dict]:
    check = dg.AssetCheckKey(dg.AssetKey(["warehouse", "orders"]), "orders_events_reconciled")
    result = runner.materialize(instance, [], checks=[check])
    (evaluation,) = [
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    return evaluation.passed, evaluation.metadata["partitions"].value


def _case(env: dict, tmp: Path, fault: str, break_ledger: bool = False) -> dict:
    write_dagster_yaml(Path(env["DAGSTER_HOME"]), postgres=False)
    instance = dg.DagsterInstance.get()
    assert runner.materialize(instance, [dg.AssetKey(["kafka", "orders"])]).success
    sent = _produce(instance, COUNT, seed=SEED)

    code = _child(env, fault, tmp, break_ledger)
    assert code == -9, f"{fault}: the child exited {code}, not by SIGKILL (see {tmp})"
    if break_ledger:
        os.environ["KAFKA_ASSETS_BREAK_LEDGER"] = "1"
    try:
        rerun = runner.materialize(
            instance, [dg.AssetKey.from_user_string(k) for k in SELECTION], run_config=RUN_CONFIG
        )
    finally:
        os.environ.pop("KAFKA_ASSETS_BREAK_LEDGER", None)
    assert rerun.success

    with psycopg.connect(env["WAREHOUSE_DSN"]) as conn:
        conn.execute(f'SET search_path TO "{env["WAREHOUSE_SCHEMA"]}"')
        orders = dict(conn.execute("SELECT order_id, status FROM orders").fetchall())
        quarantined = Counter(
            dict(
                conn.execute(
                    "SELECT source_partition, count(*) FROM quarantine WHERE topic = 'orders'"
                    " GROUP BY 1"
                ).fetchall()
            )
        )
    expected = _malformed_per_partition(env["KAFKA_BOOTSTRAP_SERVERS"], COUNT, SEED)
    passed, per = _reconciled(instance)
    figures = {
        "fault": fault,
        "orders_rows": len(orders),
        "quarantined": sum(quarantined.values()),
        "malformed_sent": sent["malformed"].get("orders", 0),
        "reconciled": passed,
    }
    print(f"\nfault case: {figures}")
    return {
        "orders_ok": orders == _expected([(COUNT, SEED)])[0],
        "quarantine_ok": quarantined == expected
        and sum(expected.values()) == sent["malformed"].get("orders", 0),
        "reconciled": passed,
        "per": per,
    }


@pytest.mark.parametrize("fault", sorted(POINTS))
def test_kill_9_then_rerun_loses_and_doubles_nothing(fault, pipeline_env, tmp_path):
    outcome = _case(pipeline_env, tmp_path, fault)
    assert outcome["orders_ok"], fault
    assert outcome["quarantine_ok"], fault
    assert outcome["reconciled"], outcome["per"]


def test_a_loader_without_its_ledger_is_caught(pipeline_env, tmp_path):
    """The suite has teeth: skip the ledger row and the same kill case fails reconciliation."""
    outcome = _case(pipeline_env, tmp_path, "load.after_commit", break_ledger=True)
    assert not outcome["reconciled"], outcome["per"]


def test_two_runs_of_one_stream_at_once_share_no_checkpoint(pipeline_env, tmp_path):
    """Two processes launch the same stream together (a demo beside the daemon): one waits for
    the other's checkpoint, and every message is consumed once between them."""
    write_dagster_yaml(Path(pipeline_env["DAGSTER_HOME"]), postgres=False)
    instance = dg.DagsterInstance.get()
    assert runner.materialize(instance, [dg.AssetKey(["kafka", "orders"])]).success
    sent = _produce(instance, COUNT, seed=SEED)

    children = [
        _start_child(pipeline_env, "", tmp_path / f"twin-{i}.log", ["spark/orders_events"])
        for i in range(2)
    ]
    codes = [c.wait(timeout=900) for c in children]
    assert codes == [0, 0], f"exit codes {codes}; logs in {tmp_path}"

    key = dg.AssetKey(["spark", "orders_events"])
    runs = [
        {k: v.value for k, v in r.asset_materialization.metadata.items()}
        for r in instance.fetch_materializations(key, limit=10).records
    ]
    print(f"\ntwo runs: {[(m['input_rows'], m['waited_for_other_run_s']) for m in runs]}")
    assert len(runs) == 2
    assert sum(m["input_rows"] for m in runs) == sent["acked"]["orders"]
    assert max(m["waited_for_other_run_s"] for m in runs) > 0


def test_postgres_stopped_mid_load_keeps_what_committed_and_a_rerun_lands_the_rest(
    pipeline_env, tmp_path, monkeypatch
):
    """The warehouse goes down while a table is loading: a clear error naming it, no partial
    batch, the table's materialization not recorded; after a restart the rerun lands the rest."""
    import threading

    from kafka_assets.local.postgres import LocalPostgres
    from kafka_assets_tests.conftest import free_port

    pg = LocalPostgres(tmp_path / "warehouse", free_port(), databases=("warehouse",))
    pg.start()
    try:
        env = {**pipeline_env, "WAREHOUSE_DSN": pg.dsn("warehouse")}
        monkeypatch.setenv("WAREHOUSE_DSN", env["WAREHOUSE_DSN"])
        write_dagster_yaml(Path(env["DAGSTER_HOME"]), postgres=False)
        instance = dg.DagsterInstance.get()
        assert runner.materialize(instance, [dg.AssetKey(["kafka", "orders"])]).success
        _produce(instance, COUNT, seed=SEED)
        small = json.loads(json.dumps(RUN_CONFIG))
        small["resources"]["streaming"]["config"]["max_offsets_per_trigger"] = 40
        stream = runner.materialize(instance, [dg.AssetKey(["spark", "orders_events"])], [], small)
        assert stream.success
        batches = _metadata_value(instance, "spark/orders_events", "batches")
        assert batches >= 6, batches

        table = dg.AssetKey(["warehouse", "orders"])
        ledger = f'"{env["WAREHOUSE_SCHEMA"]}"._kafka_assets_batches'
        stopped = threading.Event()

        def stop_after_two_batches() -> None:
            """Hold the table's load lock once two batches committed, then stop PostgreSQL:
            the loader is inside its next batch's transaction when the server goes away."""
            conn = psycopg.connect(env["WAREHOUSE_DSN"], autocommit=True)
            try:
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    try:
                        n = conn.execute(
                            f"SELECT count(*) FROM {ledger} WHERE target_table = 'orders'"
                        ).fetchone()[0]
                    except psycopg.errors.UndefinedTable:
                        n = 0
                    if n >= 2:
                        conn.execute("SELECT pg_advisory_lock(hashtext('orders'))")
                        time.sleep(1.0)  # the loader now waits inside its next transaction
                        break
                    time.sleep(0.02)
                pg.stop()
                stopped.set()
            finally:
                try:
                    conn.close()
                except psycopg.Error:
                    pass

        stopper = threading.Thread(target=stop_after_two_batches)
        stopper.start()
        failed = runner.materialize(instance, [table], checks=[])
        stopper.join(60)
        assert stopped.is_set() and not failed.success
        failure = failed.failure_data_for_node("warehouse__orders").user_failure_data
        assert "the warehouse at 127.0.0.1" in failure.description, failure.description
        assert "nothing partial was committed" in failure.description
        assert instance.get_latest_materialization_event(table) is None

        pg.start()
        with psycopg.connect(env["WAREHOUSE_DSN"]) as conn:
            committed = conn.execute(
                f"SELECT count(*), sum(rows_in) FROM {ledger} WHERE target_table = 'orders'"
            ).fetchone()
        print(f"\npostgres stopped mid-load: {committed[0]} of {batches} batches had committed")
        assert 2 <= committed[0] < batches

        rerun = runner.materialize(instance, [table, dg.AssetKey(["warehouse", "quarantine"])])
        assert rerun.success
        with psycopg.connect(env["WAREHOUSE_DSN"]) as conn:
            conn.execute(f'SET search_path TO "{env["WAREHOUSE_SCHEMA"]}"')
            orders = dict(conn.execute("SELECT order_id, status FROM orders").fetchall())
        assert orders == _expected([(COUNT, SEED)])[0]
        passed, per = _reconciled(instance)
        assert passed, per
    finally:
        pg.stop()


def _metadata_value(instance, key: str, name: str):
    event = instance.get_latest_materialization_event(dg.AssetKey.from_user_string(key))
    return event.asset_materialization.metadata[name].value


def test_a_stopped_broker_is_a_skip_and_a_named_failure_then_everything_resumes(
    pipeline_env, tmp_path, monkeypatch
):
    """A broker of its own, stopped between produce and run, then started again."""
    from kafka_assets.local.kafka_broker import KafkaBroker
    from kafka_assets_tests.conftest import free_port

    broker = KafkaBroker(tmp_path / "kafka", free_port(), free_port())
    broker.start()
    try:
        env = {**pipeline_env, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers}
        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers)
        write_dagster_yaml(Path(env["DAGSTER_HOME"]), postgres=False)
        instance = dg.DagsterInstance.get()
        assert runner.materialize(instance, [dg.AssetKey(["kafka", "orders"])]).success
        sent = _produce(instance, COUNT, seed=SEED)
        first = runner.tick(instance)
        assert isinstance(first, dg.SensorResult)

        broker.stop()
        skip = runner.tick(instance, cursor=first.cursor)
        assert isinstance(skip, dg.SkipReason), skip
        assert "unreachable" in skip.skip_message
        assert broker.bootstrap_servers in skip.skip_message
        failed = runner.materialize(instance, [dg.AssetKey(["spark", "orders_events"])], [])
        assert not failed.success
        message = failed.failure_data_for_node("spark__orders_events").user_failure_data
        assert f"Kafka at {broker.bootstrap_servers}" in message.description
        print(f"\nbroker stopped: sensor said {skip.skip_message[:90]!r}")

        broker.start()
        resumed = runner.tick(instance, cursor=first.cursor)
        assert isinstance(resumed, dg.SensorResult), resumed
        (request,) = resumed.run_requests
        assert runner.run_request(instance, request).success
        with psycopg.connect(env["WAREHOUSE_DSN"]) as conn:
            conn.execute(f'SET search_path TO "{env["WAREHOUSE_SCHEMA"]}"')
            orders = dict(conn.execute("SELECT order_id, status FROM orders").fetchall())
        assert orders == _expected([(COUNT, SEED)])[0]
        assert sum(sent["acked"].values()) == COUNT
        passed, per = _reconciled(instance)
        assert passed, per
    finally:
        broker.stop()


@pytest.fixture
def kraft_cluster(tmp_path):
    """Three combined nodes, three controllers, RF 3 and min.insync.replicas 2; stopped at the
    end whatever happened. A dead broker is fenced after 6 s instead of 9 s: the case is shorter."""
    from kafka_assets.local.kafka_broker import KafkaCluster
    from kafka_assets_tests.conftest import free_port

    cluster = KafkaCluster(
        tmp_path / "cluster",
        [(free_port(), free_port()) for _ in range(3)],
        properties={"broker.session.timeout.ms": "6000", "broker.heartbeat.interval.ms": "1000"},
    )
    try:
        print(f"\n3-node KRaft cluster ready in {cluster.start():.1f}s")
        yield cluster
    finally:
        cluster.stop()


def _leaders(admin, topic: str = "orders") -> dict[int, int]:
    return {
        p: m.leader
        for p, m in admin.list_topics(topic, timeout=10).topics[topic].partitions.items()
    }


def test_a_broker_killed_mid_stream_loses_no_acknowledged_message(
    kraft_cluster, pipeline_env, tmp_path, monkeypatch
):
    """SIGKILL one of three brokers while the producer sends and a stream reads: every message
    the producer saw acknowledged is in the topic once, and the pipeline finishes on two."""
    import threading

    from confluent_kafka.admin import AdminClient

    from kafka_assets.kafka.resources import KafkaResource

    began = time.monotonic()
    cluster = kraft_cluster
    bootstrap = cluster.bootstrap_servers
    env = {**pipeline_env, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
    write_dagster_yaml(Path(env["DAGSTER_HOME"]), postgres=False)
    instance = dg.DagsterInstance.get()
    kafka = KafkaResource(bootstrap_servers=bootstrap)
    # Created as an operator would: the declared topic (kafka/orders) says replication factor 1,
    # and its asset refuses to change an existing topic's replication factor.
    kafka.create_topic("orders", 6, 3, {"min.insync.replicas": "2"})
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})

    start = datetime.fromisoformat(START.replace("Z", "+00:00"))
    config = GeneratorConfig(seed=SEED, malformed_fraction=0.02)
    orders = [m for m in generate(BROKER_COUNT, config, start) if m.topic == "orders"]
    acked: list[tuple[int, int, bytes]] = []
    errors: list[str] = []

    def on_delivery(err, msg) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            acked.append((msg.partition(), msg.offset(), msg.value()))

    def produce() -> None:
        """The project's producer (idempotent, acks=all): half at once, for the stream to start
        on; then paced, its last quarter held for the kill, so it is sending while a broker dies
        and while the partitions change leader."""
        producer = kafka.producer()
        half, last = len(orders) // 2, len(orders) * 3 // 4
        for i, m in enumerate(orders):
            if i == half:
                producer.flush(60)
                first_half.set()
                paced = time.monotonic() - i / PRODUCE_RATE
            if i == last:
                killed.wait(120)
                paced = time.monotonic() - i / PRODUCE_RATE
            producer.produce(m.topic, m.value, m.key, on_delivery=on_delivery)
            producer.poll(0)
            if i >= half:
                time.sleep(max(0.0, paced + i / PRODUCE_RATE - time.monotonic()))
        producer.flush(120)

    staging = Path(env["SPARK_STAGING_BASE"])
    first_half, stream_done, killed = threading.Event(), threading.Event(), threading.Event()
    injected: dict = {}

    def kill_once_a_batch_is_staged() -> None:
        """Once the stream has staged a batch, kill a broker that leads orders partitions,
        preferring one that is not the active controller, and time the leaders' move."""
        deadline = time.monotonic() + 120
        while not any(staging.glob("*/query=*/batch=*")):
            if stream_done.is_set() or time.monotonic() > deadline:
                killed.set()  # nothing to wait for: the case fails on `injected`
                return
            time.sleep(0.05)
        leaders = _leaders(admin)
        controller = cluster.active_controller()
        led = Counter(leaders.values())
        victim = max(led, key=lambda b: (b != controller, led[b]))
        injected.update(
            killed_broker=victim,
            active_controller=controller,
            it_led_partitions=sorted(p for p, b in leaders.items() if b == victim),
            acked_before=len(acked),
            producer_running=sender.is_alive(),
            stream_running=not stream_done.is_set(),
        )
        killed_at = time.monotonic()
        cluster.node(victim).kill()
        killed.set()
        while victim in _leaders(admin).values() and time.monotonic() - killed_at < 60:
            time.sleep(0.2)
        injected["new_leaders_after_s"] = round(time.monotonic() - killed_at, 1)

    sender = threading.Thread(target=produce)
    killer = threading.Thread(target=kill_once_a_batch_is_staged)
    sender.start()
    first_half.wait(60)
    killer.start()
    small = json.loads(json.dumps(RUN_CONFIG))
    small["resources"]["streaming"]["config"]["max_offsets_per_trigger"] = 150
    streamed = time.monotonic()
    try:
        during = runner.materialize(instance, [dg.AssetKey(["spark", "orders_events"])], [], small)
    finally:
        stream_done.set()
        killer.join(90)
        sender.join(180)
    assert injected.get("stream_running") and injected["producer_running"], injected
    assert during.success, [e.message for e in during.all_events if e.is_failure]

    # The rest, on the two brokers left: the stream catches up in one batch, and the two
    # tables that reconciliation counts load.
    selection = [
        dg.AssetKey.from_user_string(k)
        for k in ("spark/orders_events", "warehouse/orders", "warehouse/quarantine")
    ]
    finishing = time.monotonic()
    after = runner.materialize(instance, selection)
    timings = {
        "stream_during_kill_s": round(finishing - streamed, 1),
        "rest_of_pipeline_s": round(time.monotonic() - finishing, 1),
    }
    assert after.success, [e.message for e in after.all_events if e.is_failure]

    held = _read_back(bootstrap)
    with psycopg.connect(env["WAREHOUSE_DSN"]) as conn:
        conn.execute(f'SET search_path TO "{env["WAREHOUSE_SCHEMA"]}"')
        table = dict(conn.execute("SELECT order_id, status FROM orders").fetchall())
        quarantined = Counter(
            dict(
                conn.execute(
                    "SELECT source_partition, count(*) FROM quarantine WHERE topic = 'orders'"
                    " GROUP BY 1"
                ).fetchall()
            )
        )
    malformed = _malformed_per_partition(bootstrap, BROKER_COUNT, SEED)
    passed, per = _reconciled(instance)
    per_partition = Counter(p for p, _, _ in acked)
    figures = {
        **injected,
        "sent": len(orders),
        "acked": len(acked),
        "delivery_errors": len(errors),
        "in_topic": len(held),
        "acked_missing_from_topic": sum(held.get((p, o)) != v for p, o, v in acked),
        "landed_per_partition": {p: per[p]["rows"] for p in sorted(per)},
        "acked_per_partition": {str(p): n for p, n in sorted(per_partition.items())},
        "quarantined": sum(quarantined.values()),
        "orders_rows": len(table),
        "reconciled": passed,
        **timings,
        "test_wall_s": round(time.monotonic() - began, 1),
    }
    print(f"\nbroker killed mid-stream: {figures}")
    assert not errors and len(acked) == len(orders), errors[:3]
    assert figures["acked_missing_from_topic"] == 0
    assert len(held) == len(acked)  # idempotence: the retries through the fail-over left no copy
    assert figures["landed_per_partition"] == figures["acked_per_partition"]  # valid + quarantined
    assert quarantined == malformed and sum(malformed.values()) == sum(m.malformed for m in orders)
    assert table == _expected([(BROKER_COUNT, SEED)])[0]
    assert passed, per
