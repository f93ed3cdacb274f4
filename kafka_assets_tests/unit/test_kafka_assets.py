"""Topic and producer assets against FakeKafka, and the settings KafkaResource hands to clients."""

import zlib
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest
import yaml

from kafka_assets.definitions import pipelines
from kafka_assets.kafka.producer import build_producer_asset
from kafka_assets.kafka.resources import KafkaResource
from kafka_assets.kafka.topics import PARTITIONS_CHECK, build_topic_asset, offsets_version
from kafka_assets.shop.generator import GeneratorConfig, generate, summarize
from kafka_assets.spec import TopicSpec
from kafka_assets_tests.fakes import FakeKafka

DEFS = Path(__file__).resolve().parents[2] / "kafka_assets" / "defs" / "shop"
# Built from the shop's YAML, unbound: each test supplies its own FakeKafka.
SPECS = {p.topic.name: p.topic for p in pipelines}
ORDERS = build_topic_asset(SPECS["orders"])
PAGE_VIEWS = build_topic_asset(SPECS["page_views"])
topic_assets = [ORDERS, PAGE_VIEWS]
PRODUCER = yaml.safe_load((DEFS / "producer" / "defs.yaml").read_text())["attributes"]
shop_events = build_producer_asset(
    dg.AssetKey.from_user_string(PRODUCER["asset"]["key"]),
    PRODUCER["generator"],
    [SPECS[t] for t in PRODUCER["topics"]],
    "shop",
    "the shop producer",
)
DEFAULT_PARTITIONS = {"orders": 6, "page_views": 3}

START = "2026-11-24T19:20:00Z"


def _op(asset: dg.AssetsDefinition) -> str:
    return asset.node_def.name


def _materialization(result: dg.ExecuteInProcessResult, asset: dg.AssetsDefinition):
    (mat,) = result.asset_materializations_for_node(_op(asset))
    return mat


def _failure_description(result: dg.ExecuteInProcessResult, asset: dg.AssetsDefinition) -> str:
    failure = result.failure_data_for_node(_op(asset))
    assert failure is not None, f"{_op(asset)} did not fail"
    assert failure.user_failure_data is not None, failure.error
    return failure.user_failure_data.description


def _orders_declared(**changes) -> dg.AssetsDefinition:
    """The orders topic asset as if its YAML said something else."""
    return build_topic_asset(SPECS["orders"].model_copy(update=changes))


def _check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == PARTITIONS_CHECK
    return evaluation


@pytest.fixture
def kafka() -> FakeKafka:
    return FakeKafka()


# -- topic assets --------------------------------------------------------------------------------


def test_topic_assets_create_topics_with_defaults(kafka: FakeKafka) -> None:
    result = dg.materialize(topic_assets, resources={"kafka": kafka})

    assert result.success
    assert kafka.topic_names() == ["orders", "page_views"]
    for asset in (ORDERS, PAGE_VIEWS):
        name = asset.key.path[-1]
        state = kafka.describe_topic(name)
        assert state is not None
        assert state.partitions == DEFAULT_PARTITIONS[name]
        assert state.replication_factor == 1
        assert state.config == {"retention.ms": "604800000", "cleanup.policy": "delete"}

        md = _materialization(result, asset).metadata
        assert md["partitions"].value == DEFAULT_PARTITIONS[name]
        assert md["replication_factor"].value == 1
        assert md["retention_ms"].value == "604800000"
        assert md["cleanup_policy"].value == "delete"
        assert md["end_offsets"].value == {str(p): 0 for p in range(DEFAULT_PARTITIONS[name])}
        assert md["messages_total"].value == 0
        assert md["created"].value is True
        assert md["partitions_added"].value == 0


def test_topic_metadata_reports_existing_offsets_and_data_version(kafka: FakeKafka) -> None:
    kafka.create("orders", 6, config={"retention.ms": "604800000", "cleanup.policy": "delete"})
    kafka.append("orders", 0, 5)
    kafka.append("orders", 4, 2)

    result = dg.materialize([ORDERS], resources={"kafka": kafka})

    mat = _materialization(result, ORDERS)
    ends = {0: 5, 1: 0, 2: 0, 3: 0, 4: 2, 5: 0}
    assert mat.metadata["end_offsets"].value == {str(p): o for p, o in ends.items()}
    assert mat.metadata["messages_total"].value == 7
    assert mat.metadata["created"].value is False
    assert mat.tags["dagster/data_version"] == offsets_version({"orders": ends}).value


def test_rerun_with_more_partitions_and_new_config_reconciles(kafka: FakeKafka) -> None:
    assert dg.materialize([ORDERS], resources={"kafka": kafka}).success
    kafka.append("orders", 1, 3)

    result = dg.materialize(
        [_orders_declared(partitions=8, retention_ms=3_600_000)], resources={"kafka": kafka}
    )

    assert result.success
    md = _materialization(result, ORDERS).metadata
    assert md["created"].value is False
    assert md["partitions_added"].value == 2
    assert md["partitions"].value == 8
    assert md["retention_ms"].value == "3600000"
    assert md["end_offsets"].value == {str(p): 3 if p == 1 else 0 for p in range(8)}
    state = kafka.describe_topic("orders")
    assert state is not None and state.partitions == 8
    assert state.config["retention.ms"] == "3600000"
    assert kafka.records("orders")[1] == [(None, b"{}")] * 3  # existing data is kept


def test_rerun_with_same_settings_changes_nothing(kafka: FakeKafka) -> None:
    assert dg.materialize([ORDERS], resources={"kafka": kafka}).success
    result = dg.materialize([ORDERS], resources={"kafka": kafka})

    md = _materialization(result, ORDERS).metadata
    assert (md["created"].value, md["partitions_added"].value) == (False, 0)
    assert (
        kafka.ensure_topic(
            "orders", 6, 1, {"retention.ms": "604800000", "cleanup.policy": "delete"}
        ).config_changed
        == {}
    )


def test_partitions_added_outside_are_reported_not_fatal(kafka: FakeKafka) -> None:
    """Declared partitions are a minimum: an operator may add more, and the pipeline goes on."""
    assert dg.materialize([ORDERS], resources={"kafka": kafka}).success
    kafka.add_partitions("orders", 9)  # as kafka-topics.sh --alter would

    result = dg.materialize([ORDERS], resources={"kafka": kafka})

    assert result.success
    md = _materialization(result, ORDERS).metadata
    assert (md["partitions"].value, md["partitions_declared"].value) == (9, 6)
    assert md["partitions_extra"].value == 3
    check = _check(result)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["extra"].value == 3
    assert kafka.describe_topic("orders").partitions == 9  # untouched


def test_declared_partitions_pass_the_check(kafka: FakeKafka) -> None:
    result = dg.materialize([ORDERS], resources={"kafka": kafka})
    assert _check(result).passed


def test_replication_difference_fails_with_a_message_naming_the_topic(kafka: FakeKafka) -> None:
    kafka.create("orders", 6, replication_factor=3)

    result = dg.materialize([ORDERS], resources={"kafka": kafka}, raise_on_error=False)

    assert not result.success
    message = _failure_description(result, ORDERS)
    assert "'orders'" in message and "replication factor 3" in message and "declared 1" in message


def test_cleanup_policy_difference_fails_with_a_message_naming_the_topic(kafka: FakeKafka) -> None:
    kafka.create("orders", 6, config={"cleanup.policy": "compact"})

    result = dg.materialize([ORDERS], resources={"kafka": kafka}, raise_on_error=False)

    assert not result.success
    message = _failure_description(result, ORDERS)
    assert "'orders'" in message and "cleanup.policy=compact" in message
    assert kafka.describe_topic("orders").config["cleanup.policy"] == "compact"  # untouched


def test_topic_spec_rejects_impossible_settings() -> None:
    for bad in ({"partitions": 0}, {"replication_factor": 0}, {"name": "bad name!"}):
        with pytest.raises(ValueError, match="topic"):
            TopicSpec.model_validate({"name": "t", **bad})


def test_fake_ensure_topic_reports_config_changes(kafka: FakeKafka) -> None:
    kafka.ensure_topic("t", 2, 1, {"retention.ms": "10", "cleanup.policy": "delete"})
    state = kafka.ensure_topic("t", 3, 1, {"retention.ms": "20", "cleanup.policy": "delete"})
    assert state.partitions_added == 1
    assert state.config_changed == {"retention.ms": "20"}
    assert state.config == {"retention.ms": "20", "cleanup.policy": "delete"}


def test_fakes_do_not_share_topics() -> None:
    one, two = FakeKafka(bootstrap_servers="a:1"), FakeKafka(bootstrap_servers="b:1")
    one.create("orders", 1)
    assert two.topic_names() == []


# -- producer asset ------------------------------------------------------------------------------


def _produce_config(**overrides) -> dict:
    config = {"count": 2000, "seed": 1, "start_time": START, **overrides}
    return {"ops": {_op(shop_events): {"config": config}}}


def _expected_messages(count: int = 2000, seed: int = 1):
    start = datetime.fromisoformat(START.replace("Z", "+00:00"))
    return list(generate(count, GeneratorConfig(seed=seed), start))


def test_shop_events_sends_exactly_count_messages(kafka: FakeKafka) -> None:
    result = dg.materialize(
        [*topic_assets, shop_events], resources={"kafka": kafka}, run_config=_produce_config()
    )

    assert result.success
    expected = _expected_messages()
    summary = summarize(expected)
    md = _materialization(result, shop_events).metadata
    assert md["messages_acked"].value == 2000
    assert md["per_topic"].value == {t: s["messages"] for t, s in summary.items()}
    assert md["malformed_sent"].value == {
        t: s["malformed"] for t, s in summary.items() if s["malformed"]
    }
    assert sum(s["malformed"] for s in summary.values()) > 0  # the case is exercised
    assert md["seed"].value == 1
    assert md["event_time_start"].value == "2026-11-24T19:20:00+00:00"

    # What landed in the topics: the generated bytes, each key always in one partition.
    landed: dict[str, list[tuple[bytes | None, bytes]]] = defaultdict(list)
    for topic in ("orders", "page_views"):
        ends = kafka.end_offsets([topic])[topic]
        assert sum(ends.values()) == summary[topic]["messages"]
        for partition, records in enumerate(kafka.records(topic)):
            landed[topic].extend(records)
            for key, _ in records:
                if key is not None:
                    assert zlib.crc32(key) % len(ends) == partition
    for topic in ("orders", "page_views"):
        sent = [(m.key, m.value) for m in expected if m.topic == topic]
        assert sorted(landed[topic], key=repr) == sorted(sent, key=repr)


def test_shop_events_is_reproducible_for_a_seed(kafka: FakeKafka) -> None:
    other = FakeKafka()
    for fake in (kafka, other):
        dg.materialize(
            [*topic_assets, shop_events],
            resources={"kafka": fake},
            run_config=_produce_config(count=300),
        )
    assert kafka.records("orders") == other.records("orders")
    assert kafka.records("page_views") == other.records("page_views")


def test_shop_events_without_seed_derives_it_from_end_offsets(kafka: FakeKafka) -> None:
    assert dg.materialize(topic_assets, resources={"kafka": kafka}).success
    kafka.append("orders", 0, 7)
    kafka.append("page_views", 2, 5)

    result = dg.materialize(
        [shop_events], resources={"kafka": kafka}, run_config=_produce_config(seed=None, count=10)
    )

    assert _materialization(result, shop_events).metadata["seed"].value == 12


def test_failed_deliveries_fail_the_run() -> None:
    kafka = FakeKafka(fail_deliveries=True)

    result = dg.materialize(
        [*topic_assets, shop_events],
        resources={"kafka": kafka},
        run_config=_produce_config(count=50),
        raise_on_error=False,
    )

    assert not result.success
    assert result.failure_data_for_node(_op(ORDERS)) is None  # topics were fine
    message = _failure_description(result, shop_events)
    assert "0 of 50 messages acknowledged" in message
    assert "50 delivery errors" in message
    assert result.asset_materializations_for_node(_op(shop_events)) == []


def test_the_producer_creates_missing_topics_as_their_pipelines_declare_them(
    kafka: FakeKafka,
) -> None:
    """It runs first in the lineage, so it cannot rely on the topic assets having run."""
    result = dg.materialize(
        [shop_events], resources={"kafka": kafka}, run_config=_produce_config(count=20)
    )

    assert result.success
    for name, spec in SPECS.items():
        assert kafka.describe_topic(name).partitions == spec.partitions
    md = _materialization(result, shop_events).metadata
    assert md["messages_acked"].value == 20


def test_a_topic_that_contradicts_its_declaration_fails_the_producer(kafka: FakeKafka) -> None:
    kafka.create("orders", 6, replication_factor=3)

    result = dg.materialize(
        [shop_events],
        resources={"kafka": kafka},
        run_config=_produce_config(count=20),
        raise_on_error=False,
    )

    assert not result.success
    assert "orders" in _failure_description(result, shop_events)
    assert "replication" in _failure_description(result, shop_events)


# -- KafkaResource settings ----------------------------------------------------------------------


def test_client_config_drops_empty_settings() -> None:
    resource = KafkaResource(bootstrap_servers="broker:9092", security_protocol="")

    assert resource.client_config() == {
        "bootstrap.servers": "broker:9092",
        "security.protocol": "PLAINTEXT",
        "client.id": "kafka-assets",
    }
    assert resource.spark_options() == {
        "kafka.bootstrap.servers": "broker:9092",
        "kafka.security.protocol": "PLAINTEXT",
        "kafka.fetch.max.wait.ms": "10",
        "kafka.max.poll.records": "10000",
    }


def test_sasl_plain_settings_reach_both_clients() -> None:
    resource = KafkaResource(
        bootstrap_servers="broker:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="alice",
        sasl_password='s3cr"t',
        ssl_ca_location="/etc/ca.pem",
    )

    assert resource.client_config() == {
        "bootstrap.servers": "broker:9093",
        "security.protocol": "SASL_SSL",
        "client.id": "kafka-assets",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "alice",
        "sasl.password": 's3cr"t',
        "ssl.ca.location": "/etc/ca.pem",
    }
    opts = resource.spark_options()
    assert opts["kafka.security.protocol"] == "SASL_SSL"
    assert opts["kafka.sasl.mechanism"] == "PLAIN"
    assert opts["kafka.sasl.jaas.config"] == (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        'username="alice" password="s3cr\\"t";'
    )
    assert opts["kafka.ssl.truststore.type"] == "PEM"
    assert opts["kafka.ssl.truststore.location"] == "/etc/ca.pem"


def test_sasl_settings_are_absent_when_empty() -> None:
    resource = KafkaResource(
        bootstrap_servers="broker:9092", sasl_mechanism="", sasl_username="", sasl_password=""
    )

    assert not any(k.startswith(("sasl.", "ssl.")) for k in resource.client_config())
    assert not any("sasl" in k or "ssl" in k for k in resource.spark_options())


def test_scram_uses_the_scram_login_module() -> None:
    resource = KafkaResource(
        bootstrap_servers="b:1",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="u",
        sasl_password="p",
    )
    jaas = resource.spark_options()["kafka.sasl.jaas.config"]
    assert jaas.startswith("org.apache.kafka.common.security.scram.ScramLoginModule required ")


@pytest.mark.parametrize("mechanism", ["GSSAPI", "OAUTHBEARER"])
def test_unsupported_sasl_mechanism_is_rejected(mechanism: str) -> None:
    resource = KafkaResource(bootstrap_servers="b:1", sasl_mechanism=mechanism)

    with pytest.raises(ValueError, match="KAFKA_SASL_MECHANISM") as excinfo:
        resource.spark_options()
    assert mechanism in str(excinfo.value)


def _jaas_options(jaas: str) -> dict[str, str]:
    """key="value" options as Kafka's JaasConfig reads them (java.io.StreamTokenizer).

    Inside quotes a backslash escapes the next character; only octal digits and a, b, f, n, r,
    t, v mean something else. In particular `\\uXXXX` is *not* a Unicode escape.
    """
    controls = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
    options, i = {}, 0
    while (eq := jaas.find('="', i)) != -1:
        name = jaas[jaas.rfind(" ", 0, eq) + 1 : eq]
        value, i = [], eq + 2
        while jaas[i] != '"':
            if jaas[i] == "\\":
                i += 1
                value.append(controls.get(jaas[i], jaas[i]))  # octal: unused here
            else:
                value.append(jaas[i])
            i += 1
        options[name] = "".join(value)
        i += 1
    return options


def test_jaas_config_round_trips_ascii_credentials() -> None:
    resource = KafkaResource(
        bootstrap_servers="b:1",
        sasl_mechanism="PLAIN",
        sasl_username="alice",
        sasl_password='a "quoted" \\ password',
    )
    jaas = resource.spark_options()["kafka.sasl.jaas.config"]
    assert _jaas_options(jaas) == {"username": "alice", "password": 'a "quoted" \\ password'}


def test_jaas_config_round_trips_non_ascii_credentials() -> None:
    resource = KafkaResource(
        bootstrap_servers="b:1",
        sasl_mechanism="PLAIN",
        sasl_username="zoë",
        sasl_password="pässwörd",
    )
    jaas = resource.spark_options()["kafka.sasl.jaas.config"]
    assert _jaas_options(jaas) == {"username": "zoë", "password": "pässwörd"}
