"""Session fixtures: real services for integration tests, one Spark session for everything.

Integration tests run against a real Kafka broker, real PostgreSQL (the warehouse and the legacy
CDC source), a real Kafka Connect worker and real Spark, started here on free loopback ports under
`.local/test`. When one cannot start, the tests skip locally but
*fail* when KAFKA_ASSETS_REQUIRE_SERVICES=1 (set by `make test`, so by CI) or CI=true.
"""

import os
import shutil
import socket
import uuid

import pytest

from kafka_assets.paths import LOCAL_DIR

REQUIRE = os.environ.get("KAFKA_ASSETS_REQUIRE_SERVICES") == "1" or os.environ.get("CI") == "true"


def unavailable(what: str, exc: BaseException):
    message = f"{what} unavailable: {exc}"
    if REQUIRE:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def spark():
    """The project's own Spark settings (Kafka connector on the classpath), one JVM per session."""
    try:
        from kafka_assets.local.jars import ensure_jars
        from kafka_assets.spark.resources import build_pyspark_resource

        ensure_jars(("spark",))
        session = build_pyspark_resource("local[2]").spark_session
    except Exception as exc:  # noqa: BLE001 - reported as a skip or failure
        unavailable("Spark", exc)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def spark_connect():
    """A warm Spark Connect server for runs in other processes (the daemon's, a child's).

    It starts in the background as soon as a test asks for it, so its JVM boots while the test
    prepares topics; `.url` waits until it listens.
    """
    from kafka_assets.local.jars import ensure_jars
    from kafka_assets.local.spark_cluster import SparkConnectServer

    state = LOCAL_DIR / "test" / "spark-connect"
    shutil.rmtree(state, ignore_errors=True)
    server = SparkConnectServer(state, port=free_port(), driver_memory="1536m")
    try:
        ensure_jars(("spark",))
        server.launch()
    except Exception as exc:  # noqa: BLE001
        server.stop()
        unavailable("Spark Connect", exc)
    ready = WarmServer(server)
    yield ready
    server.stop()


class WarmServer:
    """The Spark Connect server, waited for on first use."""

    def __init__(self, server):
        self._server, self._ready = server, False

    @property
    def url(self) -> str:
        if not self._ready:
            try:
                self._server.wait_ready(180)
            except Exception as exc:  # noqa: BLE001
                unavailable("Spark Connect", exc)
            self._ready = True
        return self._server.url


@pytest.fixture(scope="session")
def services():
    """Kafka, PostgreSQL, the legacy source PostgreSQL and Kafka Connect for this test session.

    WAREHOUSE_DSN and SOURCE_DSN, if set, are used instead of starting those clusters.
    """
    from kafka_assets.local.services import LocalServices

    state = LOCAL_DIR / "test"
    shutil.rmtree(state / "kafka", ignore_errors=True)
    shutil.rmtree(state / "connect", ignore_errors=True)
    shutil.rmtree(state / "spark", ignore_errors=True)
    environ = {k: v for k, v in os.environ.items() if k in {"WAREHOUSE_DSN", "SOURCE_DSN"}}
    svc = LocalServices(
        state_dir=state,
        kafka_port=free_port(),
        controller_port=free_port(),
        pg_port=free_port(),
        connect_port=free_port(),
        source_pg_port=free_port(),
        environ=environ,
    )
    try:
        endpoints = svc.up()
    except Exception as exc:  # noqa: BLE001
        try:
            svc.down()
        finally:
            unavailable("Kafka/PostgreSQL/Kafka Connect", exc)
    print(f"\nservices: {endpoints.timings}")
    yield endpoints
    svc.down()


def delete_topics(bootstrap_servers: str, timeout: float = 30.0) -> None:
    """Delete every non-internal topic and wait until the broker no longer lists them.

    The pipelines' topic names are declared (orders, page_views, ...), so tests that run them
    share names on the session's broker; each starts from no topics, like a fresh cluster.
    The Kafka Connect worker's own topics stay: it cannot run without them.
    """
    import time

    from confluent_kafka.admin import AdminClient

    from kafka_assets.local.connect_worker import INTERNAL_TOPIC_PREFIX

    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 4})
    names = [
        t
        for t in admin.list_topics(timeout=10).topics
        if not t.startswith(("__", INTERNAL_TOPIC_PREFIX))
    ]
    if not names:
        return
    for future in admin.delete_topics(names, operation_timeout=timeout).values():
        future.result()
    deadline = time.monotonic() + timeout
    while set(names) & set(admin.list_topics(timeout=10).topics):
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics {names} were not deleted within {timeout}s")
        time.sleep(0.2)


@pytest.fixture
def pipeline_env(services, spark, monkeypatch, tmp_path):
    """The environment `.env` would give, pointed at the test services: no topics, a fresh
    schema, checkpoints, staging and Dagster instance."""
    delete_topics(services.bootstrap_servers)
    schema = f"t_{uuid.uuid4().hex[:10]}"
    env = services.as_env({"WAREHOUSE_SCHEMA": schema})
    env["SPARK_CHECKPOINT_BASE"] = str(tmp_path / "checkpoints")
    env["SPARK_STAGING_BASE"] = str(tmp_path / "staging")
    env["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env
