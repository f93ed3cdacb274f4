"""Where the project keeps what it makes: one place, so nothing else guesses paths.

Everything generated (resolved jars, service data, checkpoints, staging, Dagster home) lives under
`.local/` in the project root, which git ignores. The project is installed editable
(`pip install -e`) both locally and in the Docker image, so the package's own location finds
the root.
"""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOCAL_DIR = PROJECT_ROOT / ".local"
JARS_DIR = LOCAL_DIR / "jars"
KAFKA_JARS_DIR = JARS_DIR / "kafka"
SPARK_JARS_DIR = JARS_DIR / "spark"
CONNECT_JARS_DIR = JARS_DIR / "connect"
# A Kafka Connect plugin.path: one sub-directory per plugin, each with its own class loader.
CONNECT_PLUGINS_DIR = JARS_DIR / "connect-plugins"
POM = PROJECT_ROOT / "jvm" / "pom.xml"
# The legacy shop schema CDC reads; compose's source-db and the local source cluster share it.
SOURCE_INIT_SQL = PROJECT_ROOT / "docker" / "source-db-init.sql"
ENV_FILE = PROJECT_ROOT / ".env"
