"""SASL/SCRAM-SHA-512 over TLS, end to end: a broker listener that requires both, a CA and a
certificate made here with openssl, librdkafka and Spark's Java client both authenticating."""

import subprocess
import time
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from kafka_assets import runner
from kafka_assets.kafka.resources import KafkaResource, KafkaUnavailable
from kafka_assets.local.kafka_broker import KafkaBroker
from kafka_assets.local.services import write_dagster_yaml
from kafka_assets_tests.conftest import free_port
from kafka_assets_tests.integration.test_pipeline import _expected, _produce

pytestmark = pytest.mark.integration

USER = "pipeline"
PASSWORD = "s3cret-Scram-Passw0rd-7f3a"
STORE_PASSWORD = "keystore-pass-91c2"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(folder: Path) -> tuple[Path, Path]:
    """A CA, and a broker certificate for 127.0.0.1 signed by it, as a PKCS12 keystore."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=kafka-assets test CA",
        cwd=folder,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "broker.key",
        "-out",
        "broker.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=folder,
    )
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        "broker.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "broker.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        cwd=folder,
    )
    _openssl(
        "pkcs12",
        "-export",
        "-in",
        "broker.pem",
        "-inkey",
        "broker.key",
        "-out",
        "broker.p12",
        "-passout",
        f"pass:{STORE_PASSWORD}",
        cwd=folder,
    )
    return folder / "ca.pem", folder / "broker.p12"


@pytest.fixture
def scram_broker(tmp_path):
    ca, keystore = make_certificates(tmp_path / "tls")
    port = free_port()
    broker = KafkaBroker(
        tmp_path / "kafka",
        free_port(),
        free_port(),
        extra_listeners={"SASL_SSL": port},
        properties={
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            "listener.name.sasl_ssl.ssl.keystore.type": "PKCS12",
            "listener.name.sasl_ssl.ssl.keystore.location": str(keystore),
            "listener.name.sasl_ssl.ssl.keystore.password": STORE_PASSWORD,
        },
    )
    broker.start()
    try:
        # The user is created through the loopback PLAINTEXT listener, as an operator would.
        admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
        upsert = UserScramCredentialUpsertion(
            USER, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), PASSWORD.encode()
        )
        for future in admin.alter_user_scram_credentials([upsert]).values():
            future.result()
        yield f"127.0.0.1:{port}", ca
    finally:
        broker.stop()


def test_the_pipeline_runs_through_scram_over_tls_and_no_password_is_kept(
    scram_broker, pipeline_env, monkeypatch
):
    bootstrap, ca = scram_broker
    secure = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": USER,
        "KAFKA_SASL_PASSWORD": PASSWORD,
        "KAFKA_SSL_CA_LOCATION": str(ca),
    }
    for key, value in secure.items():
        monkeypatch.setenv(key, value)
    env = {**pipeline_env, **secure}
    home = Path(env["DAGSTER_HOME"])
    write_dagster_yaml(home, postgres=False)
    instance = dg.DagsterInstance.get()

    assert runner.materialize(instance, [dg.AssetKey(["kafka", "orders"])]).success
    _produce(instance, 600, seed=51)  # librdkafka: producer and admin
    tick = runner.tick(instance)
    (request,) = tick.run_requests
    assert runner.run_request(instance, request).success  # Spark's Java client
    with psycopg.connect(env["WAREHOUSE_DSN"]) as conn:
        conn.execute(f'SET search_path TO "{env["WAREHOUSE_SCHEMA"]}"')
        orders = dict(conn.execute("SELECT order_id, status FROM orders").fetchall())
    assert orders == _expected([(600, 51)])[0]

    # Event log, runs, run configs, compute logs and metadata all live under DAGSTER_HOME.
    leaked = [
        str(path)
        for path in home.rglob("*")
        if path.is_file() and PASSWORD.encode() in path.read_bytes()
    ]
    assert not leaked, leaked


def test_wrong_credentials_fail_fast_naming_the_mechanism(scram_broker) -> None:
    bootstrap, ca = scram_broker
    kafka = KafkaResource(
        bootstrap_servers=bootstrap,
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=USER,
        sasl_password="not-the-password",
        ssl_ca_location=str(ca),
        request_timeout_s=10,
    )
    began = time.monotonic()
    with pytest.raises(KafkaUnavailable) as raised:
        kafka.end_offsets(["orders"])
    seconds = time.monotonic() - began
    message = str(raised.value)
    print(f"\nwrong credentials after {seconds:.1f}s: {message}")
    assert "refused the login" in message and "SCRAM-SHA-512" in message
    assert seconds < kafka.request_timeout_s  # refused at once: no wait for a timeout
    assert "not-the-password" not in message
