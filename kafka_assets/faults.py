"""Named points where the fault suite kills the process, to prove nothing is lost or doubled.

`KAFKA_ASSETS_FAULT=<point>` makes the process SIGKILL itself when it reaches that point: no
cleanup, no `finally`, like a machine losing power. Unset (always, outside the fault suite),
each point costs one dictionary lookup.
"""

import os
import signal

POINTS = {
    "stream.before_stage": "a micro-batch is computed, before its Parquet is written",
    "stream.after_stage": "a micro-batch is staged, before Spark commits it in the checkpoint",
    "stream.after_query": "the stream's query finished, before its step reports the output",
    "load.after_copy": "a batch was copied into the temp table, before its transaction commits",
    "load.after_commit": "a batch's rows and ledger row committed, before the next batch",
    "load.before_materialization": "every batch loaded, before Dagster records the table",
}


def fault_point(name: str) -> None:
    """Die here if the fault suite asked for it."""
    if os.environ.get("KAFKA_ASSETS_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def ledger_broken() -> bool:
    """The fault suite's control (`KAFKA_ASSETS_BREAK_LEDGER=1`): a loader that forgets its
    ledger rows must make the suite fail."""
    return os.environ.get("KAFKA_ASSETS_BREAK_LEDGER") == "1"
