"""The local services' pure parts: worker settings, cluster options, jar folders, settings."""

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kafka_assets.local import legacy_source
from kafka_assets.local.connect_worker import INTERNAL_TOPIC_PREFIX, JSON_CONVERTER, ConnectWorker
from kafka_assets.local.jars import CONNECT_PROFILES, OUT_DIRS, PROFILES
from kafka_assets.local.kafka_broker import KafkaBroker, KafkaCluster
from kafka_assets.local.postgres import LocalPostgres
from kafka_assets.local.services import Endpoints, LocalServices
from kafka_assets.paths import JARS_DIR, POM, PROJECT_ROOT

MVN = "{http://maven.apache.org/POM/4.0.0}"


def test_worker_properties_are_loopback_prefixed_and_schemaful(tmp_path: Path) -> None:
    worker = ConnectWorker(tmp_path, "127.0.0.1:9", port=18999)
    props = worker.worker_properties()
    assert props["listeners"] == "http://127.0.0.1:18999" == worker.url
    assert props["rest.advertised.host.name"] == "127.0.0.1"
    assert props["rest.advertised.port"] == "18999"
    assert props["bootstrap.servers"] == "127.0.0.1:9"
    for kind in ("config", "offset", "status"):
        assert props[f"{kind}.storage.topic"].startswith(INTERNAL_TOPIC_PREFIX)
        assert props[f"{kind}.storage.replication.factor"] == "1"
    assert not INTERNAL_TOPIC_PREFIX.startswith("__"), "Kafka's own internal topics use __"
    for side in ("key", "value"):
        assert props[f"{side}.converter"] == JSON_CONVERTER
        assert props[f"{side}.converter.schemas.enable"] == "true"
    assert props["plugin.path"] == str(OUT_DIRS["debezium"].parent)


def test_worker_writes_its_properties_file(tmp_path: Path) -> None:
    worker = ConnectWorker(tmp_path / "connect", "127.0.0.1:9")
    worker._write_config()
    lines = worker.config_file.read_text().splitlines()
    assert dict(line.split("=", 1) for line in lines) == worker.worker_properties()
    assert str(worker.log_file) in (worker.home / "log4j2.properties").read_text()


def test_every_profile_writes_where_jars_py_looks() -> None:
    root = ET.parse(POM).getroot()
    jars_dir = root.find(f"{MVN}properties/{MVN}jars.dir").text
    assert jars_dir == "${project.basedir}/../.local/jars"
    declared = {}
    for profile in root.iter(f"{MVN}profile"):
        out = profile.find(f"{MVN}properties/{MVN}jars.out").text
        declared[profile.find(f"{MVN}id").text] = JARS_DIR / out.removeprefix("${jars.dir}/")
    assert declared == OUT_DIRS
    assert set(CONNECT_PROFILES) <= set(PROFILES)


def test_debezium_plugin_dir_leaves_out_what_the_worker_has() -> None:
    root = ET.parse(POM).getroot()
    (debezium,) = [p for p in root.iter(f"{MVN}profile") if p.find(f"{MVN}id").text == "debezium"]
    excluded = set(debezium.find(f"{MVN}properties/{MVN}jars.exclude").text.split(","))
    assert {"connect-api", "kafka-clients", "slf4j-api"} <= excluded
    (connect,) = [p for p in root.iter(f"{MVN}profile") if p.find(f"{MVN}id").text == "connect"]
    artifacts = {d.find(f"{MVN}artifactId").text for d in connect.iter(f"{MVN}dependency")}
    # Without slf4j-api 2.x pinned, log4j's slf4j2 binding is silent and the worker logs nothing.
    assert {"connect-runtime", "slf4j-api", "log4j-slf4j2-impl"} <= artifacts


def _broker_properties(broker: KafkaBroker) -> dict[str, str]:
    broker._write_config()
    return dict(line.split("=", 1) for line in broker.config_file.read_text().splitlines())


def test_a_single_broker_is_its_own_quorum(tmp_path: Path) -> None:
    props = _broker_properties(KafkaBroker(tmp_path, 19999, 19998))
    assert props["node.id"] == "1"
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19998"
    assert props["offsets.topic.replication.factor"] == "1"
    assert "min.insync.replicas" not in props and "default.replication.factor" not in props


def test_cluster_nodes_share_one_quorum_and_replicate(tmp_path: Path) -> None:
    cluster = KafkaCluster(tmp_path, [(101, 201), (102, 202), (103, 203)], properties={"a": "b"})
    assert cluster.bootstrap_servers == "127.0.0.1:101,127.0.0.1:102,127.0.0.1:103"
    assert len({n.home for n in cluster.nodes}) == 3
    assert len({n.cluster_id for n in cluster.nodes}) == 1 and cluster.nodes[0].cluster_id
    (voters,) = {n.voters for n in cluster.nodes}  # every node is formatted with the same list
    assert [str(v).rsplit(":", 1)[0] for v in voters] == [
        f"{i}@127.0.0.1:{200 + i}" for i in (1, 2, 3)
    ]
    assert len({v.directory_id for v in voters}) == 3
    for node_id in (1, 2, 3):
        node = cluster.node(node_id)
        props = _broker_properties(node)
        assert props["node.id"] == str(node_id) and node.heap == "384m"
        assert props["listeners"] == (
            f"PLAINTEXT://127.0.0.1:{100 + node_id},CONTROLLER://127.0.0.1:{200 + node_id}"
        )
        assert props["controller.quorum.bootstrap.servers"] == (
            "127.0.0.1:201,127.0.0.1:202,127.0.0.1:203"
        )
        assert "controller.quorum.voters" not in props  # a dynamic quorum, from the format
        assert props["default.replication.factor"] == "3"
        assert props["min.insync.replicas"] == "2"
        assert props["offsets.topic.replication.factor"] == "3"
        assert props["transaction.state.log.min.isr"] == "2"
        assert props["a"] == "b"


def test_server_options_add_settings_after_the_defaults(tmp_path: Path) -> None:
    pg = LocalPostgres(tmp_path / "pg", 15999, settings={"wal_level": "logical"})
    options = pg.server_options()
    assert options.startswith("-p 15999 -k ")
    assert "-c listen_addresses=127.0.0.1" in options
    assert options.endswith("-c wal_level=logical")
    small = LocalPostgres(tmp_path / "pg", settings={"shared_buffers": "64MB"}).server_options()
    assert small.count("shared_buffers") == 1 and "shared_buffers=64MB" in small


def test_source_cluster_has_logical_decoding_and_its_own_port(tmp_path: Path) -> None:
    services = LocalServices(state_dir=tmp_path, source_pg_port=15998, environ={})
    source = services.source_postgres
    assert source.settings["wal_level"] == "logical"
    assert int(source.settings["max_wal_senders"]) >= 4
    assert int(source.settings["max_replication_slots"]) >= 4
    assert source.databases == (legacy_source.DATABASE,)
    assert source.dsn().endswith(":15998/legacy")
    assert services.postgres.settings == {}, "the warehouse cluster keeps its settings"
    assert "KAFKA_ASSETS_SOURCE_PG_PORT" in source.port_hint


def _env_example() -> dict[str, str]:
    lines = (PROJECT_ROOT / ".env.example").read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if re.match(r"[A-Z_]+=", line))
    return dict(pairs)


def test_ports_and_password_come_from_the_environment() -> None:
    example = _env_example()
    defaults = LocalServices.from_env({})
    assert defaults.connect_port == int(example["KAFKA_ASSETS_CONNECT_PORT"])
    assert defaults.source_pg_port == int(example["KAFKA_ASSETS_SOURCE_PG_PORT"])
    assert defaults.source_cdc_password == example["SOURCE_CDC_PASSWORD"]
    custom = LocalServices.from_env(
        {
            "KAFKA_ASSETS_CONNECT_PORT": "28083",
            "KAFKA_ASSETS_SOURCE_PG_PORT": "25433",
            "SOURCE_CDC_PASSWORD": "s3cret",
        }
    )
    assert (custom.connect_port, custom.source_pg_port) == (28083, 25433)
    assert custom.source_cdc_password == "s3cret"
    assert "s3cret" not in repr(custom)


def test_as_env_names_every_setting_in_env_example(tmp_path: Path) -> None:
    endpoints = Endpoints(
        "127.0.0.1:1",
        "postgresql://postgres@127.0.0.1:2/warehouse",
        "",
        tmp_path,
        connect_url="http://127.0.0.1:3",
        source_dsn="postgresql://postgres@127.0.0.1:4/legacy",
        source_cdc_password="s3cret",
    )
    env = endpoints.as_env()
    settings = {k for k in _env_example() if not k.startswith("KAFKA_ASSETS_")}
    assert set(env) == settings
    assert env["CONNECT_URL"] == "http://127.0.0.1:3"
    assert env["SOURCE_DSN"].endswith(":4/legacy")
    assert (env["SOURCE_CDC_USER"], env["SOURCE_CDC_PASSWORD"]) == ("cdc", "s3cret")
    assert "s3cret" not in repr(endpoints)


def test_debezium_config_reads_the_source_dsn() -> None:
    config = legacy_source.debezium_postgres_config(
        "postgresql://admin:pw@db.example:6543/legacy",
        user="cdc",
        password="x",
        topic_prefix="legacy",
        slot_name="kafka_assets",
    )
    assert config["connector.class"] == legacy_source.POSTGRES_CONNECTOR
    assert (config["database.hostname"], config["database.port"]) == ("db.example", "6543")
    assert config["database.dbname"] == "legacy"
    assert (config["database.user"], config["database.password"]) == ("cdc", "x")
    assert config["plugin.name"] == "pgoutput"
    assert config["publication.name"] == legacy_source.PUBLICATION
    assert config["publication.autocreate.mode"] == "disabled"
    assert config["table.include.list"] == "shop.customers,shop.products,shop.orders"
    assert config["topic.creation.default.replication.factor"] == "1"
    default_port = legacy_source.debezium_postgres_config(
        "postgresql://h/legacy", user="u", password="p", topic_prefix="t", slot_name="s"
    )
    assert default_port["database.port"] == "5432"
    with pytest.raises(ValueError):
        legacy_source.debezium_postgres_config(
            "postgresql://h", user="u", password="p", topic_prefix="t", slot_name="s"
        )


def test_spark_master_names_the_kind_of_spark() -> None:
    from kafka_assets.spark.resources import spark_kind

    assert spark_kind("local[2]") == spark_kind("local") == "local"
    assert spark_kind("spark://127.0.0.1:7077") == "standalone"
    assert spark_kind("sc://127.0.0.1:15002") == "connect"
    with pytest.raises(ValueError, match="SPARK_MASTER='yarn'"):
        spark_kind("yarn")


def test_a_standalone_cluster_gets_the_connector_jars_and_small_executors(tmp_path: Path) -> None:
    from kafka_assets.spark.resources import JVM_OPTIONS, spark_config

    (tmp_path / "kafka-clients.jar").touch()
    (tmp_path / "spark-sql-kafka.jar").touch()
    local = spark_config("local[2]", tmp_path)
    assert "spark.jars" not in local and "spark.executor.memory" not in local
    cluster = spark_config("spark://127.0.0.1:7077", tmp_path, "768m", 1, 1)
    assert cluster["spark.master"] == "spark://127.0.0.1:7077"
    assert cluster["spark.jars"].split(",") == [
        str(tmp_path / "kafka-clients.jar"),
        str(tmp_path / "spark-sql-kafka.jar"),
    ]
    assert cluster["spark.driver.extraClassPath"] == str(tmp_path / "*")
    assert (cluster["spark.executor.memory"], cluster["spark.executor.cores"]) == ("768m", "1")
    assert cluster["spark.cores.max"] == "1"
    # Every JVM that runs tasks lets HotSpot compile the parse's large generated method.
    assert local["spark.driver.extraJavaOptions"] == JVM_OPTIONS
    assert cluster["spark.executor.extraJavaOptions"] == JVM_OPTIONS


def test_spark_services_use_explicit_ports_from_the_environment(tmp_path: Path) -> None:
    example = _env_example()
    assert LocalServices.from_env({}).spark == example["KAFKA_ASSETS_SPARK"] == "local"
    svc = LocalServices.from_env(
        {
            "KAFKA_ASSETS_SPARK": "standalone",
            "KAFKA_ASSETS_SPARK_MASTER_PORT": "27077",
            "KAFKA_ASSETS_SPARK_MASTER_UI_PORT": "28080",
            "KAFKA_ASSETS_SPARK_WORKER_PORT": "27078",
            "KAFKA_ASSETS_SPARK_WORKER_UI_PORT": "28081",
            "KAFKA_ASSETS_SPARK_CONNECT_PORT": "25002",
        }
    )
    cluster = svc.spark_standalone
    assert cluster.master_url == "spark://127.0.0.1:27077"
    commands = cluster._commands()
    assert commands["master"][1] == "org.apache.spark.deploy.master.Master"
    assert commands["worker"][1] == "org.apache.spark.deploy.worker.Worker"
    for name, ports in {"master": ("27077", "28080"), "worker": ("27078", "28081")}.items():
        command = commands[name]
        assert command[command.index("--port") + 1] == ports[0]
        assert command[command.index("--webui-port") + 1] == ports[1]
    assert commands["worker"][-1] == cluster.master_url
    env = cluster._env()
    assert env["SPARK_LOCAL_IP"] == "127.0.0.1"
    assert env["SPARK_WORKER_DIR"].startswith(str(svc.state_dir))
    assert svc.spark_connect.url == "sc://127.0.0.1:25002"
    assert svc._spark_to_start() == cluster
    # A cluster SPARK_MASTER already names is used as it is: nothing is started.
    named = LocalServices.from_env({"KAFKA_ASSETS_SPARK": "connect", "SPARK_MASTER": "sc://h:1"})
    assert named._spark_to_start() is None


def test_spark_master_in_the_env_is_local_unless_a_cluster_was_started(tmp_path: Path) -> None:
    endpoints = Endpoints("127.0.0.1:1", "postgresql://p@127.0.0.1:2/w", "", tmp_path)
    assert endpoints.as_env()["SPARK_MASTER"] == "local[2]"
    assert endpoints.as_env({"SPARK_MASTER": "local[1]"})["SPARK_MASTER"] == "local[1]"
    endpoints.spark_master = "spark://127.0.0.1:17077"
    assert endpoints.as_env({"SPARK_MASTER": "local[1]"})["SPARK_MASTER"] == endpoints.spark_master


def test_staged_batches_are_listed_without_a_jvm(tmp_path: Path) -> None:
    """Spark Connect gives no JVM here: local staging is listed with plain file operations."""
    from kafka_assets.spark.staging import _list_local_batches

    done = tmp_path / "query=ab-12" / "batch=000000000001"
    done.mkdir(parents=True)
    (done / "_SUCCESS").touch()
    (tmp_path / "query=ab-12" / "batch=000000000002").mkdir()  # still being written
    (batch,) = _list_local_batches(tmp_path)
    assert (batch.query_id, batch.batch_id, batch.path) == ("ab-12", 1, f"file:{done}")
