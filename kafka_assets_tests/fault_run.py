"""`python -m kafka_assets_tests.fault_run '<json>'`: one in-process run, as the demo does it.

The fault suite starts it with KAFKA_ASSETS_FAULT set, so the process SIGKILLs itself at that
point; the argument is {"selection": [...], "run_config": {...}}.
"""

import json
import sys

import dagster as dg

from kafka_assets import runner


def main() -> int:
    spec = json.loads(sys.argv[1])
    selection = [dg.AssetKey.from_user_string(k) for k in spec["selection"]]
    result = runner.materialize(
        dg.DagsterInstance.get(), selection, run_config=spec.get("run_config")
    )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
