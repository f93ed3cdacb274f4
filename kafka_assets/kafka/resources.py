"""The one Kafka client resource: admin, producer, end offsets, and the same settings for Spark.

Security settings (SASL/SSL) pass through to both librdkafka and Spark's Java client; secrets come
in through `dg.EnvVar`. Nothing connects at import or at definition. The client that reads
metadata and offsets is kept per process and settings, so a sensor tick in the daemon's code
server does not pay a new client's connection every time.
"""

import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

import dagster as dg

Offsets = dict[str, dict[int, int]]
"""{topic: {partition: offset}}, the shape of every offset map in the project."""

_READERS: dict[tuple, tuple[object, list[str]]] = {}
"""Per client settings: an admin client for metadata and offsets, and the login refusals its
error callback has seen. librdkafka clients are thread-safe and reconnect by themselves."""
_READERS_LOCK = threading.Lock()


@dataclass(frozen=True)
class TopicState:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)
    end_offsets: dict[int, int] = field(default_factory=dict)
    created: bool = False
    partitions_added: int = 0
    partitions_extra: int = 0
    """Partitions beyond the declared minimum, added outside the project."""
    config_changed: dict[str, str] = field(default_factory=dict)


class TopicConfigError(ValueError):
    """The requested topic configuration cannot be applied to the existing topic."""


class KafkaUnavailable(RuntimeError):
    """The cluster did not answer; the message names the bootstrap servers and the error."""


_SASL_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


class KafkaResource(dg.ConfigurableResource):
    """Connection settings for one Kafka cluster, and the few operations the assets need."""

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = ""
    ssl_ca_location: str = ""
    client_id: str = "kafka-assets"
    request_timeout_s: float = 15.0
    spark_fetch_max_wait_ms: int = 10
    """How long the broker may hold a fetch from Spark's consumers that finds no new data.

    Spark reads ranges that already exist, yet each task's consumer waits this long once at the
    end of its range: at Kafka's default of 500 ms, a 100-message micro-batch over 6 partitions
    took 2.2 s on 2 cores, and 0.45 s at 10 ms."""
    spark_max_poll_records: int = 10_000
    """Records each poll of Spark's consumers hands back. At Kafka's default of 500, reading
    1M orders (300 MB) took 2.3 s on 2 cores; at 10,000, 1.2 to 1.4 s. A poll holds at most
    this many records of a task's range in memory."""

    # -- settings -------------------------------------------------------------------------
    def client_config(self) -> dict[str, str]:
        """librdkafka settings; empty values mean 'not used' so .env can list every key."""
        conf = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol or "PLAINTEXT",
            "client.id": self.client_id,
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password,
            "ssl.ca.location": self.ssl_ca_location,
        }
        return {k: v for k, v in conf.items() if v}

    def spark_options(self) -> dict[str, str]:
        """The same cluster settings in the `kafka.`-prefixed form Spark's connector expects."""
        opts = {
            "kafka.bootstrap.servers": self.bootstrap_servers,
            "kafka.security.protocol": self.security_protocol or "PLAINTEXT",
            "kafka.fetch.max.wait.ms": str(self.spark_fetch_max_wait_ms),
            "kafka.max.poll.records": str(self.spark_max_poll_records),
        }
        if self.sasl_mechanism:
            module = _SASL_MODULES.get(self.sasl_mechanism.upper())
            if module is None:
                raise ValueError(
                    f"KAFKA_SASL_MECHANISM={self.sasl_mechanism!r} is not supported for Spark; "
                    f"use one of {sorted(_SASL_MODULES)}"
                )
            opts["kafka.sasl.mechanism"] = self.sasl_mechanism
            opts["kafka.sasl.jaas.config"] = (
                f"{module} required username={json.dumps(self.sasl_username, ensure_ascii=False)} "
                f"password={json.dumps(self.sasl_password, ensure_ascii=False)};"
            )
        if self.ssl_ca_location:
            opts["kafka.ssl.truststore.type"] = "PEM"
            opts["kafka.ssl.truststore.location"] = self.ssl_ca_location
        return opts

    def _security(self) -> str:
        """How this client connects, for error messages: protocol and SASL mechanism."""
        protocol = self.security_protocol or "PLAINTEXT"
        return f"{protocol}, SASL {self.sasl_mechanism}" if self.sasl_mechanism else protocol

    # -- clients --------------------------------------------------------------------------
    def admin(self, on_error=None, log_level: int = 4):
        from confluent_kafka.admin import AdminClient

        # Warnings and errors only: librdkafka's notices (e.g. a background queue purged when a
        # short-lived admin client closes) are not something an operator can act on.
        conf: dict[str, object] = {**self.client_config(), "log_level": log_level}
        if on_error is not None:
            conf["error_cb"] = on_error
        return AdminClient(conf)

    def _metadata(self):
        """An admin client and the cluster's metadata. A refused login fails at once, naming the
        mechanism; an unreachable cluster fails after `request_timeout_s`."""
        from confluent_kafka import KafkaError, KafkaException

        key = tuple(sorted((k, str(v)) for k, v in self.client_config().items()))
        with _READERS_LOCK:
            if key not in _READERS:
                refused: list[str] = []

                def on_error(err, refused=refused) -> None:
                    if err.code() in (
                        KafkaError._AUTHENTICATION,
                        KafkaError.SASL_AUTHENTICATION_FAILED,
                    ):
                        refused.append(err.str())

                # Kept for the process: it would log every reconnect to a stopped broker, so
                # it logs nothing; each call reports what failed (error_cb, exceptions).
                _READERS[key] = (self.admin(on_error, log_level=0), refused)
            admin, refused = _READERS[key]
        refused.clear()
        waited, last = 0.0, None
        while waited < self.request_timeout_s:
            try:
                return admin, admin.list_topics(timeout=1.0)
            except KafkaException as exc:
                last = exc
            waited += 1.0
            admin.poll(0)  # serves librdkafka's error callbacks
            if refused:
                with _READERS_LOCK:
                    _READERS.pop(key, None)  # the next call starts over with a new client
                raise KafkaUnavailable(
                    f"Kafka at {self.bootstrap_servers} ({self._security()}) refused the login: "
                    f"{refused[0]}"
                )
        raise KafkaUnavailable(
            f"Kafka at {self.bootstrap_servers} ({self._security()}) did not answer within "
            f"{self.request_timeout_s:.0f}s: {last.args[0] if last and last.args else last}"
        )

    def producer(self, **overrides: object):
        """An idempotent producer: librdkafka leaves idempotence off unless asked (acks=all)."""
        from confluent_kafka import Producer

        conf: dict[str, object] = {
            **self.client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "max.in.flight.requests.per.connection": 5,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
        }
        conf.update(overrides)
        return Producer(conf)

    # -- operations -----------------------------------------------------------------------
    def end_offsets(self, topics: Iterable[str]) -> Offsets:
        """High watermarks of every partition of `topics`: one metadata and one ListOffsets call.

        Missing topics are reported as an empty map so a sensor can say so instead of failing.
        """
        return self._list_offsets(topics, earliest=False)

    def start_offsets(self, topics: Iterable[str]) -> Offsets:
        """Log start offsets: the first offset retention has not deleted, per partition."""
        return self._list_offsets(topics, earliest=True)

    def offsets_for_time(self, topic: str, when_ms: int) -> dict[int, int]:
        """Per partition, the first offset whose timestamp is at or after `when_ms` (Kafka's
        offsetsForTimes); a partition with no such message gives its end offset."""
        from confluent_kafka.admin import OffsetSpec

        found = self._list_offsets([topic], spec=OffsetSpec.for_timestamp(when_ms))[topic]
        ends = self.end_offsets([topic])[topic]
        return {p: (o if o >= 0 else ends[p]) for p, o in found.items()}

    def timestamps_at(self, topic: str, offsets: Mapping[int, int]) -> dict[int, int]:
        """The Kafka timestamp (ms) of the message at each {partition: offset}; partitions whose
        offset holds no message yet are left out. Reads one message per partition."""
        from confluent_kafka import Consumer, TopicPartition

        if not offsets:
            return {}
        consumer = Consumer(
            {
                **self.client_config(),
                "group.id": f"{self.client_id}-timestamps",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "log_level": 4,
            }
        )
        found: dict[int, int] = {}
        try:
            consumer.assign([TopicPartition(topic, p, o) for p, o in offsets.items()])
            pending = set(offsets)
            deadline = self.request_timeout_s
            while pending and deadline > 0:
                msg = consumer.poll(0.5)
                deadline -= 0.5
                if msg is None:
                    continue
                if msg.partition() in pending:
                    pending.discard(msg.partition())
                    if msg.error() is None:
                        found[msg.partition()] = msg.timestamp()[1]
                    consumer.pause([TopicPartition(topic, msg.partition())])
        finally:
            consumer.close()
        return found

    def _list_offsets(self, topics: Iterable[str], earliest: bool = False, spec=None) -> Offsets:
        from confluent_kafka import KafkaException, TopicPartition
        from confluent_kafka.admin import OffsetSpec

        wanted = list(topics)
        admin, md = self._metadata()
        if spec is None:
            spec = OffsetSpec.earliest() if earliest else OffsetSpec.latest()
        request = {}
        result: Offsets = {t: {} for t in wanted}
        for topic in wanted:
            tmd = md.topics.get(topic)
            if tmd is None or tmd.error is not None:
                continue
            for p in tmd.partitions:
                request[TopicPartition(topic, p)] = spec
        if not request:
            return result
        for attempt in range(5):
            futures = admin.list_offsets(request, request_timeout=self.request_timeout_s)
            try:
                for tp, fut in futures.items():
                    result[tp.topic][tp.partition] = fut.result().offset
                return result
            except KafkaException as exc:
                # A leader moving (a new topic, a broker restart) is retriable: ask again.
                if exc.args and _leader_moving(exc.args[0]) and attempt < 4:
                    time.sleep(0.2 * (attempt + 1))
                    continue
                raise KafkaUnavailable(
                    f"Kafka at {self.bootstrap_servers}: listing offsets failed: {exc}"
                ) from exc
        return result

    def describe_topic(self, name: str) -> TopicState | None:
        from confluent_kafka.admin import ConfigResource, ResourceType

        admin = self.admin()
        md = admin.list_topics(timeout=self.request_timeout_s)
        tmd = md.topics.get(name)
        if tmd is None or tmd.error is not None:
            return None
        resource = ConfigResource(ResourceType.TOPIC, name)
        configs = admin.describe_configs([resource])[resource].result(self.request_timeout_s)
        replication = len(next(iter(tmd.partitions.values())).replicas) if tmd.partitions else 0
        return TopicState(
            name=name,
            partitions=len(tmd.partitions),
            replication_factor=replication,
            config={k: v.value for k, v in configs.items() if v.value is not None},
            end_offsets=self.end_offsets([name])[name],
        )

    def create_topic(
        self, name: str, partitions: int, replication_factor: int, config: Mapping[str, str]
    ) -> None:
        from confluent_kafka.admin import NewTopic

        admin = self.admin()  # held until the future resolves: a dropped client aborts it
        futures = admin.create_topics(
            [NewTopic(name, partitions, replication_factor, config=dict(config))],
            request_timeout=self.request_timeout_s,
        )
        futures[name].result()
        self._wait_for_leaders(admin, name)

    def _wait_for_leaders(self, admin, name: str) -> None:
        """A created topic answers offset requests only once every partition has a leader:
        before that the broker says NOT_LEADER_OR_FOLLOWER."""
        deadline = time.monotonic() + self.request_timeout_s
        while time.monotonic() < deadline:
            tmd = admin.list_topics(name, timeout=self.request_timeout_s).topics.get(name)
            if (
                tmd is not None
                and tmd.error is None
                and tmd.partitions
                and all(p.leader >= 0 and p.error is None for p in tmd.partitions.values())
            ):
                return
            time.sleep(0.1)

    def add_partitions(self, name: str, total: int) -> None:
        from confluent_kafka.admin import NewPartitions

        admin = self.admin()
        admin.create_partitions([NewPartitions(name, total)])[name].result()

    def alter_topic_config(self, name: str, changes: Mapping[str, str]) -> None:
        from confluent_kafka.admin import (
            AlterConfigOpType,
            ConfigEntry,
            ConfigResource,
            ResourceType,
        )

        resource = ConfigResource(
            ResourceType.TOPIC,
            name,
            incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
                for k, v in changes.items()
            ],
        )
        admin = self.admin()
        admin.incremental_alter_configs([resource])[resource].result()

    def ensure_topic(
        self,
        name: str,
        partitions: int,
        replication_factor: int,
        config: Mapping[str, str],
    ) -> TopicState:
        """Create the topic, or reconcile an existing one towards the declared settings.

        `partitions` is a minimum: fewer are raised to it, more (an operator added them) are kept
        and reported in `partitions_extra`. A different replication factor or cleanup policy
        raises TopicConfigError naming the topic: changing either would reassign partitions or
        rewrite what the log keeps. Other configs (retention) are altered to the declared value.
        """
        current = self.describe_topic(name)
        if current is None:
            self.create_topic(name, partitions, replication_factor, config)
            state = self.describe_topic(name)
            if state is None:
                raise TopicConfigError(f"Topic '{name}' was created but cannot be described")
            return replace(state, created=True)

        if replication_factor != current.replication_factor:
            raise TopicConfigError(
                f"Topic '{name}' has replication factor {current.replication_factor}, not the "
                f"declared {replication_factor}; changing it needs a partition reassignment, "
                "which this asset does not do."
            )
        declared_policy = config.get("cleanup.policy")
        actual_policy = current.config.get("cleanup.policy")
        if declared_policy and actual_policy and _policy(declared_policy) != _policy(actual_policy):
            raise TopicConfigError(
                f"Topic '{name}' has cleanup.policy={actual_policy}, not the declared "
                f"{declared_policy}; change the declaration or the topic, deliberately: the "
                "policy decides which messages Kafka keeps."
            )
        added = max(0, partitions - current.partitions)
        if added:
            self.add_partitions(name, partitions)
        changed = {
            k: str(v)
            for k, v in config.items()
            if k != "cleanup.policy" and current.config.get(k) != str(v)
        }
        if changed:
            self.alter_topic_config(name, changed)
        state = self.describe_topic(name)
        if state is None:
            raise TopicConfigError(f"Topic '{name}' disappeared while it was being reconciled")
        return replace(
            state,
            partitions_added=added,
            partitions_extra=max(0, state.partitions - partitions),
            config_changed=changed,
        )


def _leader_moving(err) -> bool:
    from confluent_kafka import KafkaError

    return err.retriable() or err.code() in (
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    )


def _policy(value: str) -> frozenset[str]:
    return frozenset(p.strip() for p in value.split(",") if p.strip())
