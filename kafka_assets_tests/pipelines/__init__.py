"""Pipeline YAML files used by tests, and a defs package builder to load them like a project."""

import importlib
import shutil
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHOP = HERE.parents[1] / "kafka_assets" / "defs" / "shop"


def defs_package(root: Path, files: dict[str, str | Path], with_shop: bool = False):
    """Import a fresh defs package under `root`: {"payments": yaml text or path} -> defs.yaml."""
    name = f"defs_{uuid.uuid4().hex[:8]}"
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    if with_shop:
        shutil.copytree(SHOP, package / "shop")
    for folder, content in files.items():
        (package / folder).mkdir(parents=True)
        text = content.read_text() if isinstance(content, Path) else content
        (package / folder / "defs.yaml").write_text(text)
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(root))
