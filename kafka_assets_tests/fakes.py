"""In-memory stand-ins for the live resources, so assets and sensors run unchanged in unit tests.

`FakeKafka` is a real `KafkaResource` (same config fields, same `client_config`/`spark_options`,
same topic policy in `ensure_topic`) whose few broker primitives (describe, create, add
partitions, alter config, end offsets, produce) work on topics held in memory.

Dagster hands assets and sensors copies of a resource rebuilt from its config fields, so the
broker state cannot live on the instance. Like a real client, a fake finds its cluster by its
address: `FakeKafka()` gets a fresh `memory://<uuid>` bootstrap address, and every copy with that
address reaches the same in-memory cluster. Two fakes never share topics.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from kafka_assets.kafka.resources import KafkaResource, Offsets, TopicState


@dataclass
class FakeTopic:
    name: str
    replication_factor: int
    config: dict[str, str]
    partitions: list[list[tuple[bytes | None, bytes]]] = field(default_factory=list)
    """Per partition, the (key, value) records in offset order."""
    log_start: dict[int, int] = field(default_factory=dict)
    """Per partition, the first offset not deleted (by retention or DeleteRecords)."""


@dataclass(frozen=True)
class FakeMessage:
    """What confluent_kafka hands to a delivery callback: accessors, not attributes."""

    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes:
        return self._value


class FakeDeliveryError(Exception):
    """Stands in for confluent_kafka.KafkaError in a failed delivery report."""


@dataclass
class FakeBroker:
    """The state of one fake cluster, shared by a FakeKafka and the copies Dagster makes of it."""

    topics: dict[str, FakeTopic] = field(default_factory=dict)
    producers: list[FakeProducer] = field(default_factory=list)


class FakeProducer:
    """The subset of confluent_kafka.Producer the producer asset uses.

    Messages are queued by `produce` and appended to their partition on `poll`/`flush`, where
    the delivery callback runs, as librdkafka does. With `fail` set, every delivery report is
    an error and nothing is appended; so is a message for a topic that does not exist.
    """

    def __init__(self, kafka: FakeKafka, fail: bool = False):
        self._kafka = kafka
        self._fail = fail
        self._queue: list[tuple[str, bytes | None, bytes, Callable | None]] = []
        self.produced = 0

    def produce(self, topic, value=None, key=None, on_delivery=None, **_ignored) -> None:
        if isinstance(value, str):
            value = value.encode()
        if isinstance(key, str):
            key = key.encode()
        self._queue.append((topic, key, value, on_delivery))
        self.produced += 1

    def poll(self, timeout: float = 0) -> int:
        return self._deliver()

    def flush(self, timeout: float = -1) -> int:
        self._deliver()
        return len(self._queue)

    def __len__(self) -> int:
        return len(self._queue)

    def _deliver(self) -> int:
        queued, self._queue = self._queue, []
        for topic, key, value, callback in queued:
            # Topic auto-creation is off in this project: an unknown topic fails the delivery.
            if self._fail or topic not in self._kafka._broker.topics:
                reason = "fake delivery failure" if self._fail else "Unknown topic or partition"
                if callback:
                    failed = FakeMessage(topic, -1, -1, key, value)
                    callback(FakeDeliveryError(f"Broker: {reason}"), failed)
                continue
            partition, offset = self._kafka._append(topic, key, value)
            if callback:
                callback(None, FakeMessage(topic, partition, offset, key, value))
        return len(queued)


_CLUSTERS: dict[str, FakeBroker] = {}
"""In-memory clusters by bootstrap address: the stand-in for the network."""


class FakeKafka(KafkaResource):
    """A broker in memory: topics, partitions, configs, end offsets and a producer."""

    fail_deliveries: bool = False
    """Every delivery report of `producer()` is an error (the broker never acknowledges)."""

    def __init__(self, **config: object) -> None:
        # An explicit value, so the copies Dagster rebuilds from config reach the same cluster.
        config.setdefault("bootstrap_servers", f"memory://{uuid.uuid4().hex}")
        super().__init__(**config)

    @property
    def _broker(self) -> FakeBroker:
        return _CLUSTERS.setdefault(self.bootstrap_servers, FakeBroker())

    # -- test helpers -----------------------------------------------------------------------
    def create(
        self,
        name: str,
        partitions: int,
        replication_factor: int = 1,
        config: Mapping[str, str] | None = None,
    ) -> None:
        """Create a topic directly, as another client of the broker would."""
        self.create_topic(name, partitions, replication_factor, config or {})

    def append(self, topic: str, partition: int, count: int = 1) -> None:
        """Append `count` records to one partition, moving its end offset."""
        for _ in range(count):
            self._broker.topics[topic].partitions[partition].append((None, b"{}"))

    def records(self, topic: str) -> list[list[tuple[bytes | None, bytes]]]:
        return [list(p) for p in self._broker.topics[topic].partitions]

    def topic_names(self) -> list[str]:
        return sorted(self._broker.topics)

    @property
    def producers(self) -> list[FakeProducer]:
        return list(self._broker.producers)

    def _append(self, topic: str, key: bytes | None, value: bytes) -> tuple[int, int]:
        parts = self._broker.topics[topic].partitions
        # A stable hash (Python's hash() of bytes is salted per process).
        index = (zlib.crc32(key) if key is not None else sum(map(len, parts))) % len(parts)
        parts[index].append((key, value))
        return index, len(parts[index]) - 1

    # -- KafkaResource primitives -----------------------------------------------------------
    def admin(self):
        raise AssertionError("FakeKafka has no AdminClient; use its overridden operations")

    def producer(self, **overrides: object) -> FakeProducer:
        producer = FakeProducer(self, fail=self.fail_deliveries)
        self._broker.producers.append(producer)
        return producer

    def end_offsets(self, topics: Iterable[str]) -> Offsets:
        result: Offsets = {}
        for name in topics:
            topic = self._broker.topics.get(name)
            result[name] = (
                {p: len(records) for p, records in enumerate(topic.partitions)} if topic else {}
            )
        return result

    def start_offsets(self, topics: Iterable[str]) -> Offsets:
        """0, unless `delete_records` moved a partition's log start, as retention would."""
        return {
            t: {p: self._broker.topics[t].log_start.get(p, 0) for p in parts}
            for t, parts in self.end_offsets(topics).items()
        }

    def delete_records(self, topic: str, before: dict[int, int]) -> None:
        """The broker's DeleteRecords: records below `before[partition]` are gone."""
        self._broker.topics[topic].log_start.update(before)

    def timestamps_at(self, topic: str, offsets) -> dict[int, int]:
        return {}  # the fake's records carry no timestamps

    def describe_topic(self, name: str) -> TopicState | None:
        topic = self._broker.topics.get(name)
        if topic is None:
            return None
        return TopicState(
            name=name,
            partitions=len(topic.partitions),
            replication_factor=topic.replication_factor,
            config=dict(topic.config),
            end_offsets=self.end_offsets([name])[name],
        )

    def create_topic(
        self, name: str, partitions: int, replication_factor: int, config: Mapping[str, str]
    ) -> None:
        if name in self._broker.topics:
            raise ValueError(f"topic {name} exists")
        self._broker.topics[name] = FakeTopic(
            name,
            replication_factor,
            {k: str(v) for k, v in config.items()},
            [[] for _ in range(partitions)],
        )

    def add_partitions(self, name: str, total: int) -> None:
        parts = self._broker.topics[name].partitions
        if total <= len(parts):
            raise ValueError(f"{name} has {len(parts)} partitions; cannot grow to {total}")
        parts.extend([] for _ in range(total - len(parts)))

    def alter_topic_config(self, name: str, changes: Mapping[str, str]) -> None:
        self._broker.topics[name].config.update(changes)
