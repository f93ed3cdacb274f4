"""Where a stream run starts: where it stopped, a replay point, or past data retention deleted.

A replay sets the stream's checkpoint aside and starts a new query at the requested offsets (per
partition, or the first offsets at a timestamp, resolved with Kafka's offsetsForTimes). The
warehouse stays right because every table write is idempotent by position: `append` rows are
keyed by (partition, offset), `latest` rows only move forward in `order_by`, an aggregate
stream is always rebuilt from the log start, so each window is recomputed whole, and totals the
warehouse keeps leave out every message in the offset ranges they have already counted.
"""

import json
from dataclasses import dataclass, field
from datetime import datetime

import dagster as dg

from kafka_assets.kafka.resources import KafkaResource
from kafka_assets.spark.streams import lost_ranges


class StreamRunConfig(dg.Config):
    """Per-run choices for a stream. The defaults are a normal run: continue where it stopped."""

    replay_from_offsets: dict[str, int] | None = None
    """Reprocess from these offsets, e.g. {"0": 1200, "3": 0}; partitions not named keep their
    current position."""
    replay_from_timestamp: str | None = None
    """Reprocess from the first message at or after this ISO-8601 time, e.g. 2026-11-24T09:00Z."""
    reason: str = ""
    """Why: recorded in the stream's metadata with the replay."""
    requested_by: str = ""
    """Who asked, if known: recorded with the replay."""
    continue_after_data_loss: bool = False
    """Opt-in, per run: when retention deleted unread offsets, continue from the log start
    offset instead of failing. The lost ranges are recorded in the metadata."""


class DataLost(RuntimeError):
    """Retention deleted offsets the stream had not read; the message names each range."""


@dataclass
class StartPlan:
    starting_offsets: str = "earliest"
    fail_on_data_loss: bool = True
    replay: dict | None = None
    lost: dict[str, tuple[int, int]] = field(default_factory=dict)
    start_offsets: dict[str, int] = field(default_factory=dict)
    """The offsets a new query starts at, for the first batch's consumed range."""

    @property
    def new_query(self) -> bool:
        return self.replay is not None


def _when_ms(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise dg.Failure(f"replay_from_timestamp {text!r} is not an ISO-8601 time") from exc
    if moment.tzinfo is None:
        raise dg.Failure(f"replay_from_timestamp {text!r} needs a time zone, e.g. a trailing Z")
    return int(moment.timestamp() * 1000)


def plan_start(
    config: StreamRunConfig,
    *,
    stream: str,
    topic: str,
    output_mode: str,
    position: dict[str, int] | None,
    kafka: KafkaResource,
) -> StartPlan:
    """Decide how this run starts; raises DataLost (unless opted in) naming the lost ranges."""
    if config.replay_from_offsets is not None and config.replay_from_timestamp:
        raise dg.Failure("give replay_from_offsets or replay_from_timestamp, not both")
    log_start = kafka.start_offsets([topic])[topic]
    replaying = config.replay_from_offsets is not None or bool(config.replay_from_timestamp)
    if not replaying:
        lost = lost_ranges(position, log_start)
        if lost and not config.continue_after_data_loss:
            ranges = ", ".join(f"partition {p}: {a}-{b}" for p, (a, b) in lost.items())
            raise DataLost(
                f"Stream '{stream}': retention deleted offsets of topic '{topic}' before they "
                f"were read ({ranges}). Those messages are gone from Kafka. To go on from the "
                "log start offset, run the stream with config continue_after_data_loss: true "
                "(recorded in its metadata); or replay it from an offset or a timestamp."
            )
        return StartPlan(fail_on_data_loss=not lost, lost=lost, start_offsets=_str(log_start))

    ends = kafka.end_offsets([topic])[topic]
    if output_mode != "append":
        # A window's value needs every message of the window: recompute them all.
        start = dict(log_start)
        resolved = "log start (aggregates are rebuilt whole)"
    elif config.replay_from_timestamp:
        start = kafka.offsets_for_time(topic, _when_ms(config.replay_from_timestamp))
        resolved = "offsetsForTimes"
    else:
        requested = {int(p): int(o) for p, o in (config.replay_from_offsets or {}).items()}
        unknown = sorted(set(requested) - set(ends))
        if unknown:
            raise dg.Failure(f"replay_from_offsets: topic '{topic}' has no partitions {unknown}")
        current = {int(p): o for p, o in (position or {}).items()}
        start = {p: requested.get(p, current.get(p, log_start[p])) for p in ends}
        resolved = "offsets"
    # Never before the log start: those messages no longer exist.
    start = {p: min(max(o, log_start[p]), ends[p]) for p, o in start.items()}
    replay = {
        "from_offsets": config.replay_from_offsets,
        "from_timestamp": config.replay_from_timestamp,
        "resolved_by": resolved,
        "start_offsets": _str(start),
        "reason": config.reason,
        "requested_by": config.requested_by or "unknown",
    }
    return StartPlan(
        starting_offsets=json.dumps({topic: {str(p): o for p, o in sorted(start.items())}}),
        replay=replay,
        start_offsets=_str(start),
    )


def _str(offsets: dict[int, int]) -> dict[str, int]:
    return {str(p): o for p, o in sorted(offsets.items())}
