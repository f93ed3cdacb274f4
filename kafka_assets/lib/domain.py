"""Where a component's assets are grouped by default: the domain folder its YAML lives in."""

import re

import dagster as dg


def domain_group(context: dg.ComponentLoadContext) -> str:
    """The first folder under `defs/` (`defs/shop/orders/defs.yaml` -> `shop`).

    One group per domain rather than per layer: the layer is already in the key (kafka/, spark/,
    warehouse/) and the kind, and a project with a single domain is drawn whole in Dagster's
    lineage, with no collapsed group box to open by hand.
    """
    relative = context.path.relative_to(context.defs_module_path)
    folders = [p for p in relative.parts if not p.endswith((".yaml", ".yml", ".py"))]
    return re.sub(r"\W", "_", folders[0]) if folders else "default"
