"""Static checks of the docker compose deployment (no Docker engine needed).

docker-compose.yml, Dockerfile, docker/dagster.yaml, docker/workspace.yaml and
docker/postgres-init.sql must agree with each other and with .env.example, the list of every
setting the code reads. Names are derived from those files wherever possible, so renaming a
variable, a service, a port or a database in one place without the others fails here.
"""

from __future__ import annotations

import importlib
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
INSTANCE_YAML = ROOT / "docker" / "dagster.yaml"
WORKSPACE_YAML = ROOT / "docker" / "workspace.yaml"
POM = ROOT / "jvm" / "pom.xml"
PYPROJECT = ROOT / "pyproject.toml"

SERVICES = (
    "kafka",
    "postgres",
    "source-db",
    "connect",
    "user-code",
    "dagster-webserver",
    "dagster-daemon",
)
DAGSTER_SERVICES = ("user-code", "dagster-webserver", "dagster-daemon")
INFRA_SERVICES = ("kafka", "postgres", "source-db", "connect")
# .env.example entries that are not read by the code in the user-code container:
# the ports of the services `python -m kafka_assets.local up` starts, and DAGSTER_HOME, which the
# image sets to its own absolute path.
LOCAL_SERVICE_PREFIX = "KAFKA_ASSETS_"
NOT_PASSED_TO_USER_CODE = {"DAGSTER_HOME"}
PG_CONTAINER_PORT = "5432"
CONNECT_CONTAINER_PORT = "8083"
JSON_CONVERTER = "org.apache.kafka.connect.json.JsonConverter"
INITDB_DIR = "/docker-entrypoint-initdb.d"


# ---------------------------------------------------------------------------------------------
# parsing helpers


def parse_env_file(path: Path) -> dict[str, str]:
    """NAME=value lines of a dotenv file; comments and blank lines are skipped."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        name, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a NAME=value line: {raw!r}"
        name = name.strip()
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", name), f"{path.name}: bad variable name {name!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        assert name not in values, f"{path.name}: {name} is defined twice"
        values[name] = value
    return values


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment`, list or mapping form, as a dict of strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.partition("=") for item in env)
        return {name: value for name, _, value in pairs}
    return {name: "" if value is None else str(value) for name, value in env.items()}


def published_ports(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(published host port, container port) pairs of a service, short or long syntax."""
    pairs: list[tuple[str, str]] = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            pairs.append((str(entry.get("published", "")), str(entry["target"])))
            continue
        spec = str(entry).split("/", 1)[0]
        parts = spec.rsplit(":", 2)
        if len(parts) == 1:  # container port only: the host port is random
            pairs.append(("", parts[0]))
        else:  # HOST:CONTAINER or IP:HOST:CONTAINER
            pairs.append((parts[-2], parts[-1]))
    return pairs


def listeners(value: str) -> dict[str, tuple[str, str]]:
    """'NAME://host:port,...' -> {NAME: (host, port)}."""
    result: dict[str, tuple[str, str]] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, address = item.partition("://")
        assert sep, f"not a listener: {item!r}"
        host, _, port = address.rpartition(":")
        result[name] = (host, port)
    return result


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def option(argv: list[str], *names: str) -> str:
    """The value after the first of `names` in argv (`-p 4000` or `--port=4000`)."""
    for index, arg in enumerate(argv):
        for name in names:
            if arg == name and index + 1 < len(argv):
                return argv[index + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    raise AssertionError(f"none of {names} in {argv}")


def has_healthcheck(service: dict[str, Any]) -> bool:
    check = service.get("healthcheck") or {}
    test = check.get("test")
    if check.get("disable") or not test:
        return False
    return (test if isinstance(test, str) else test[0]) != "NONE"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\s*\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
    return instructions


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in dockerfile_instructions():
        if keyword == "ENV":
            for token in shlex.split(args):
                name, _, value = token.partition("=")
                env[name] = value
    return env


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    values = parse_env_file(ENV_EXAMPLE)
    assert values, ".env.example parsed to nothing"
    return values


@pytest.fixture(scope="module")
def code_settings(env_example: dict[str, str]) -> set[str]:
    """The .env.example names the code reads, which user-code must therefore set."""
    names = {
        name
        for name in env_example
        if not name.startswith(LOCAL_SERVICE_PREFIX) and name not in NOT_PASSED_TO_USER_CODE
    }
    # Guard the derivation itself: each family the code reads must still be there.
    for prefix in ("KAFKA_", "WAREHOUSE_", "SPARK_", "DAGSTER_PG_URL"):
        assert any(name.startswith(prefix) for name in names), f"no {prefix}* in .env.example"
    return names


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text())


# ---------------------------------------------------------------------------------------------
# services and health


def test_all_services_exist(services: dict[str, dict[str, Any]]) -> None:
    missing = [name for name in SERVICES if name not in services]
    assert not missing, f"docker-compose.yml lacks services {missing}"


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name in INFRA_SERVICES:
        image = services[name]["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and "/" not in tag, f"{name}: unpinned {image}"
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["postgres"]["image"].startswith("postgres:")


def test_kafka_runs_kraft_combined_mode(services: dict[str, dict[str, Any]]) -> None:
    env = environment_of(services["kafka"])
    roles = {role.strip() for role in env["KAFKA_PROCESS_ROLES"].split(",")}
    assert {"broker", "controller"} <= roles
    controller_names = {n.strip() for n in env["KAFKA_CONTROLLER_LISTENER_NAMES"].split(",")}
    assert controller_names <= set(listeners(env["KAFKA_LISTENERS"]))
    # Single node: the quorum is this node.
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@")
    assert "CLUSTER_ID" in env


@pytest.mark.parametrize("name", ["kafka", "postgres", "source-db", "connect", "user-code"])
def test_healthchecks(services: dict[str, dict[str, Any]], name: str) -> None:
    assert has_healthcheck(services[name]), f"{name} has no healthcheck"


def test_postgres_healthcheck_uses_pg_isready(services: dict[str, dict[str, Any]]) -> None:
    test = services["postgres"]["healthcheck"]["test"]
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))


def test_depends_on_waits_for_health(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends_on = service.get("depends_on") or {}
        assert isinstance(depends_on, dict), f"{name}: depends_on must name a condition"
        for dependency, spec in depends_on.items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert (spec or {}).get("condition") == "service_healthy", f"{name} -> {dependency}"
            assert has_healthcheck(services[dependency]), f"{name} waits on {dependency}'s health"
    assert set(INFRA_SERVICES) <= set(services["user-code"]["depends_on"])
    for name in ("dagster-webserver", "dagster-daemon"):
        assert {"user-code", "postgres"} <= set(services[name]["depends_on"])


# ---------------------------------------------------------------------------------------------
# ports: the stack answers on the host where the local services would (.env.example)


def test_kafka_host_port_matches_env_example(
    services: dict[str, dict[str, Any]], env_example: dict[str, str]
) -> None:
    port = env_example[f"{LOCAL_SERVICE_PREFIX}KAFKA_PORT"]
    kafka = services["kafka"]
    env = environment_of(kafka)
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    host = env_example["KAFKA_BOOTSTRAP_SERVERS"].rsplit(":", 1)[0]
    external = [name for name, address in advertised.items() if address == (host, port)]
    assert external, f"kafka does not advertise {host}:{port} ({advertised})"
    bound = listeners(env["KAFKA_LISTENERS"])
    assert bound[external[0]][1] == port, "the EXTERNAL listener binds another port"
    assert (port, port) in published_ports(kafka), f"kafka does not publish {port}:{port}"
    # .env.example's host-side bootstrap address uses the same port.
    assert env_example["KAFKA_BOOTSTRAP_SERVERS"].rsplit(":", 1)[1] == port


def test_postgres_host_port_matches_env_example(
    services: dict[str, dict[str, Any]], env_example: dict[str, str]
) -> None:
    port = env_example[f"{LOCAL_SERVICE_PREFIX}PG_PORT"]
    assert (port, PG_CONTAINER_PORT) in published_ports(services["postgres"])
    assert str(urlsplit(env_example["WAREHOUSE_DSN"]).port) == port


# ---------------------------------------------------------------------------------------------
# user-code: every setting the code reads, pointed at the containers


def test_user_code_sets_every_setting_the_code_reads(
    services: dict[str, dict[str, Any]], code_settings: set[str]
) -> None:
    env = environment_of(services["user-code"])
    missing = sorted(code_settings - set(env))
    assert not missing, f"user-code does not set {missing} (listed in .env.example)"


def test_user_code_bootstrap_is_kafka_internal_listener(
    services: dict[str, dict[str, Any]],
) -> None:
    kafka_env = environment_of(services["kafka"])
    advertised = listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    internal_name = kafka_env["KAFKA_INTER_BROKER_LISTENER_NAME"]
    host, port = advertised[internal_name]
    assert host in {"kafka", services["kafka"].get("hostname")}, "internal listener host"
    bootstrap = environment_of(services["user-code"])["KAFKA_BOOTSTRAP_SERVERS"]
    assert bootstrap == f"{host}:{port}"
    # Plain text inside the stack unless the user overrides it.
    assert environment_of(services["user-code"])["KAFKA_SECURITY_PROTOCOL"] in {
        "PLAINTEXT",
        "${KAFKA_SECURITY_PROTOCOL:-PLAINTEXT}",
    }


def test_user_code_spark_state_is_on_a_volume(services: dict[str, dict[str, Any]]) -> None:
    user_code = services["user-code"]
    env = environment_of(user_code)
    targets = [
        (volume["target"] if isinstance(volume, dict) else volume.split(":")[1])
        for volume in user_code.get("volumes") or []
    ]
    for name in ("SPARK_CHECKPOINT_BASE", "SPARK_STAGING_BASE"):
        path = env[name]
        assert path.startswith("/"), f"{name} must be absolute in the container"
        assert any(path.startswith(target.rstrip("/") + "/") for target in targets), (
            f"{name}={path} is not on a volume: checkpoints would vanish with the container"
        )


def test_warehouse_database_is_created_by_postgres(services: dict[str, dict[str, Any]]) -> None:
    pg_env = environment_of(services["postgres"])
    dsn = urlsplit(environment_of(services["user-code"])["WAREHOUSE_DSN"])
    assert dsn.hostname == "postgres" and str(dsn.port or PG_CONTAINER_PORT) == PG_CONTAINER_PORT
    assert dsn.path.lstrip("/") == pg_env["POSTGRES_DB"]
    assert dsn.username == pg_env.get("POSTGRES_USER", "postgres")
    assert dsn.password == pg_env["POSTGRES_PASSWORD"]


def test_dagster_database_is_created_by_init_script(services: dict[str, dict[str, Any]]) -> None:
    postgres = services["postgres"]
    pg_env = environment_of(postgres)
    init_scripts = []
    for volume in postgres.get("volumes") or []:
        if isinstance(volume, dict):
            source, target = volume.get("source", ""), volume["target"]
        else:
            source, target = volume.split(":")[:2]
        if target.startswith(INITDB_DIR):
            init_scripts.append(ROOT / source)
    assert init_scripts, f"postgres mounts nothing into {INITDB_DIR}"
    sql = "\n".join(path.read_text() for path in init_scripts)

    dagster_db = urlsplit(environment_of(services["user-code"])["DAGSTER_PG_URL"]).path.lstrip("/")
    assert dagster_db == "dagster"
    assert dagster_db != pg_env["POSTGRES_DB"], "Dagster storage and warehouse share a database"
    assert re.search(rf"CREATE\s+DATABASE\s+\"?{dagster_db}\"?", sql, re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# change data capture: the legacy source database and the Kafka Connect worker


def init_scripts(service: dict[str, Any]) -> list[tuple[str, Path]]:
    """(file name in the init dir, source file) of a postgres service, in the order run."""
    scripts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            source, target = volume.get("source", ""), volume["target"]
        else:
            source, target = volume.split(":")[:2]
        if target.startswith(INITDB_DIR + "/"):
            scripts.append((target.rsplit("/", 1)[1], ROOT / source))
    return sorted(scripts)


def test_source_db_runs_logical_decoding_like_the_local_cluster(
    services: dict[str, dict[str, Any]],
) -> None:
    from kafka_assets.local.legacy_source import SERVER_SETTINGS

    argv = command_of(services["source-db"])
    assert argv[0] == "postgres"
    settings = dict(
        argv[i + 1].split("=", 1) for i, arg in enumerate(argv[:-1]) if arg in {"-c", "--set"}
    )
    assert settings.get("wal_level") == "logical"
    assert int(settings["max_wal_senders"]) >= 4
    assert int(settings["max_replication_slots"]) >= 4
    for name in ("wal_level", "max_wal_senders", "max_replication_slots"):
        assert settings[name] == SERVER_SETTINGS[name], f"{name}: compose and local differ"


def test_source_db_init_makes_role_then_schema_and_publication(
    services: dict[str, dict[str, Any]],
) -> None:
    from kafka_assets.local.legacy_source import CDC_USER, PUBLICATION, TABLES
    from kafka_assets.paths import SOURCE_INIT_SQL

    source_db = services["source-db"]
    scripts = init_scripts(source_db)
    assert [path.suffix for _, path in scripts] == [".sh", ".sql"], "role first, then schema"
    role_script, schema_sql = (path for _, path in scripts)
    assert schema_sql == SOURCE_INIT_SQL, "compose and the local cluster run different schemas"
    role = role_script.read_text()
    assert re.search(rf"CREATE\s+ROLE\s+{CDC_USER}\s+WITH\s+LOGIN\s+REPLICATION", role)
    assert "SOURCE_CDC_PASSWORD" in role and "PASSWORD :'" in role, "password from the env"
    sql = schema_sql.read_text()
    assert re.search(rf"CREATE\s+PUBLICATION\s+{PUBLICATION}\s+FOR\s+TABLE", sql)
    for table in TABLES:
        assert re.search(rf"ALTER\s+TABLE\s+shop\.{table}\s+REPLICA\s+IDENTITY\s+FULL", sql)
        assert f"shop.{table}" in sql.split("CREATE PUBLICATION", 1)[1]
    assert re.search(rf"GRANT\s+SELECT\s+ON\s+[^;]*\s+TO\s+{CDC_USER};", sql)
    # The container's password variable is the one user-code hands to the connector.
    password = environment_of(source_db)["SOURCE_CDC_PASSWORD"]
    assert password == environment_of(services["user-code"])["SOURCE_CDC_PASSWORD"]


def test_user_code_reaches_the_source_db_and_connect(
    services: dict[str, dict[str, Any]], env_example: dict[str, str]
) -> None:
    from kafka_assets.local.legacy_source import CDC_USER

    env = environment_of(services["user-code"])
    source_env = environment_of(services["source-db"])
    dsn = urlsplit(env["SOURCE_DSN"])
    assert dsn.hostname == "source-db" and str(dsn.port or PG_CONTAINER_PORT) == PG_CONTAINER_PORT
    assert dsn.path.lstrip("/") == source_env["POSTGRES_DB"] == "legacy"
    assert dsn.username == source_env["POSTGRES_USER"]
    assert dsn.password == source_env["POSTGRES_PASSWORD"]
    assert env["SOURCE_CDC_USER"] == env_example["SOURCE_CDC_USER"] == CDC_USER
    url = urlsplit(env["CONNECT_URL"])
    assert url.hostname == "connect" and str(url.port) == CONNECT_CONTAINER_PORT


def test_connect_worker_matches_the_local_worker(services: dict[str, dict[str, Any]]) -> None:
    from kafka_assets.local.connect_worker import INTERNAL_TOPIC_PREFIX

    connect = services["connect"]
    env = environment_of(connect)
    assert "kafka" in (connect.get("depends_on") or {}), "connect starts before Kafka is healthy"
    assert (
        env["BOOTSTRAP_SERVERS"] == environment_of(services["user-code"])["KAFKA_BOOTSTRAP_SERVERS"]
    )
    for kind in ("KEY", "VALUE"):
        assert env[f"{kind}_CONVERTER"] == JSON_CONVERTER
        assert env[f"CONNECT_{kind}_CONVERTER_SCHEMAS_ENABLE"] == "true"
    for kind in ("CONFIG", "OFFSET", "STATUS"):
        assert env[f"{kind}_STORAGE_TOPIC"].startswith(INTERNAL_TOPIC_PREFIX)
        assert env[f"CONNECT_{kind}_STORAGE_REPLICATION_FACTOR"] == "1"


def test_connect_worker_resolves_the_password_from_its_environment(
    services: dict[str, dict[str, Any]],
) -> None:
    """The connector config says ${env:SOURCE_CDC_PASSWORD}; the worker's env config provider
    resolves it, exactly as the local worker's properties do."""
    from kafka_assets.local.connect_worker import ConnectWorker

    env = environment_of(services["connect"])
    local = ConnectWorker(Path("/nonexistent"), "kafka:9092").worker_properties()
    assert env["CONNECT_CONFIG_PROVIDERS"] == local["config.providers"] == "env"
    assert (
        env["CONNECT_CONFIG_PROVIDERS_ENV_CLASS"]
        == local["config.providers.env.class"]
        == "org.apache.kafka.common.config.provider.EnvVarConfigProvider"
    )
    assert (
        env["SOURCE_CDC_PASSWORD"] == environment_of(services["user-code"])["SOURCE_CDC_PASSWORD"]
    )
    assert str(env["OFFSET_FLUSH_INTERVAL_MS"]) == local["offset.flush.interval.ms"]


def test_cdc_host_ports_match_env_example(
    services: dict[str, dict[str, Any]], env_example: dict[str, str]
) -> None:
    source_port = env_example[f"{LOCAL_SERVICE_PREFIX}SOURCE_PG_PORT"]
    assert (source_port, PG_CONTAINER_PORT) in published_ports(services["source-db"])
    assert str(urlsplit(env_example["SOURCE_DSN"]).port) == source_port
    connect_port = env_example[f"{LOCAL_SERVICE_PREFIX}CONNECT_PORT"]
    assert (connect_port, CONNECT_CONTAINER_PORT) in published_ports(services["connect"])
    assert str(urlsplit(env_example["CONNECT_URL"]).port) == connect_port
    ports = [v for k, v in env_example.items() if k.startswith(LOCAL_SERVICE_PREFIX)]
    assert len(ports) == len(set(ports)), f"two local services share a port: {ports}"


# ---------------------------------------------------------------------------------------------
# the Dagster services, the image and the instance/workspace files they load


def test_dagster_services_share_instance_settings(services: dict[str, dict[str, Any]]) -> None:
    images = {services[name]["image"] for name in DAGSTER_SERVICES}
    assert len(images) == 1, f"Dagster services run different images: {images}"
    home = dockerfile_env()["DAGSTER_HOME"]
    pg_urls = set()
    for name in DAGSTER_SERVICES:
        env = environment_of(services[name])
        assert env.get("DAGSTER_HOME") == home, f"{name}: DAGSTER_HOME != Dockerfile's {home}"
        pg_urls.add(env.get("DAGSTER_PG_URL"))
    assert len(pg_urls) == 1 and None not in pg_urls, f"DAGSTER_PG_URL differs: {pg_urls}"
    url = urlsplit(pg_urls.pop())
    assert url.hostname == "postgres" and url.scheme.startswith("postgresql")


def test_dockerfile_resolves_spark_jars_and_installs_instance() -> None:
    instructions = dockerfile_instructions()
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    mvn = [cmd for args in runs for cmd in re.split(r"&&|;", args) if re.search(r"\bmvn\b", cmd)]
    spark_steps = [
        cmd
        for cmd in mvn
        if re.search(r"-P\s*spark\b", cmd) and "-f jvm/pom.xml" in cmd and "package" in cmd
    ]
    assert spark_steps, f"no `mvn -f jvm/pom.xml -P spark package` step (mvn steps: {mvn})"
    assert not any(re.search(r"-P\s*broker\b", cmd) for cmd in mvn), "broker jars not needed"
    assert "<id>spark</id>" in POM.read_text()

    assert instructions[0][0] == "FROM" and "python:3.11" in instructions[0][1]
    assert any("openjdk-17-jdk-headless" in args for args in runs)  # javac, for jvm/udf
    assert any("build_udf_jar()" in args for args in runs), "the parse's Java function is not built"
    # kafka_assets/paths.py derives the project root (and the jars dir) from the package's own
    # location: the package must stay in the app dir, i.e. be installed editable.
    assert any(re.search(r"\bpip install\s+(-e|--editable)\s+\.", args) for args in runs)
    home = dockerfile_env()["DAGSTER_HOME"]
    instance_target = re.compile(
        r"(\$DAGSTER_HOME|\$\{DAGSTER_HOME\}|" + re.escape(home) + r")/dagster\.yaml"
    )
    copies_instance = any(
        "docker/dagster.yaml" in args and instance_target.search(args)
        for keyword, args in instructions
        if keyword in {"RUN", "COPY"}
    )
    assert copies_instance, "docker/dagster.yaml is not installed as $DAGSTER_HOME/dagster.yaml"


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = {
        line.strip().strip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for required in (".venv", ".local", ".git", "jvm/target"):
        assert required in patterns, f".dockerignore does not exclude {required}"
    assert any("__pycache__" in pattern for pattern in patterns)


def test_instance_storage_is_postgres_from_env(
    services: dict[str, dict[str, Any]], env_example: dict[str, str]
) -> None:
    instance = yaml.safe_load(INSTANCE_YAML.read_text())
    assert instance["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_PG_URL"}
    assert "DAGSTER_PG_URL" in env_example
    assert instance["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert instance["run_launcher"]["class"] == "DefaultRunLauncher"
    for key in ("run_coordinator", "run_launcher"):
        # The code pointers must exist in the pinned Dagster (dagster.core.* no longer does).
        module = importlib.import_module(instance[key]["module"])
        assert hasattr(module, instance[key]["class"]), f"{key}: no {instance[key]['class']}"
    assert instance["run_monitoring"]["enabled"] is True
    assert instance["sensors"]["use_threads"] is True


def test_workspace_points_at_user_code(
    services: dict[str, dict[str, Any]], pyproject: dict[str, Any]
) -> None:
    workspace = yaml.safe_load(WORKSPACE_YAML.read_text())
    (location,) = workspace["load_from"]
    grpc = location["grpc_server"]
    assert grpc["host"] == "user-code" and grpc["host"] in services

    argv = command_of(services["user-code"])
    assert str(grpc["port"]) == option(argv, "-p", "--port")
    assert option(argv, "-h", "--host") == "0.0.0.0"
    dagster = pyproject["tool"]["dagster"]
    assert option(argv, "-m", "--module-name") == dagster["module_name"]
    assert grpc["location_name"] == dagster["code_location_name"]


def test_webserver_and_daemon_load_the_docker_workspace(
    services: dict[str, dict[str, Any]],
) -> None:
    app_dir = next(args for keyword, args in dockerfile_instructions() if keyword == "WORKDIR")
    expected = f"{app_dir.rstrip('/')}/{WORKSPACE_YAML.relative_to(ROOT).as_posix()}"
    for name, executable in (
        ("dagster-webserver", "dagster-webserver"),
        ("dagster-daemon", "dagster-daemon"),
    ):
        argv = command_of(services[name])
        assert argv[0] == executable
        assert option(argv, "-w", "--workspace") == expected
    webserver = command_of(services["dagster-webserver"])
    port = option(webserver, "-p", "--port")
    assert (port, port) in published_ports(services["dagster-webserver"])


# ---------------------------------------------------------------------------------------------
# interpolation: nothing in compose silently depends on an undocumented variable

INTERPOLATION = re.compile(
    r"(?<!\$)\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def test_interpolated_variables_have_defaults_or_are_documented(
    env_example: dict[str, str],
) -> None:
    # Compose interpolates values only (not comments or keys); $$ is a literal dollar sign.
    def strings(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [s for value in node.values() for s in strings(value)]
        if isinstance(node, list):
            return [s for value in node for s in strings(value)]
        return [node] if isinstance(node, str) else []

    values = strings(yaml.safe_load(COMPOSE_FILE.read_text()))
    found = [m for value in values for m in INTERPOLATION.finditer(value.replace("$$", ""))]
    assert found, "expected the Kafka security settings to be interpolated"
    undocumented = []
    for match in found:
        name = match["braced"] or match["bare"]
        op = match["op"] or ""
        has_default = op in {"-", ":-"}
        if not has_default and name not in env_example:
            undocumented.append(match.group(0))
        if has_default and name in env_example:
            # A default for a documented setting must not contradict .env.example.
            assert match["arg"] == env_example[name], (
                f"{match.group(0)}: default differs from .env.example's {name}="
                f"{env_example[name]!r}"
            )
    assert not undocumented, f"interpolated without default or .env.example entry: {undocumented}"
