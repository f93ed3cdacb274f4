"""Resolve the JVM artifacts with Maven once into `.local/jars`: nothing downloads at run time."""

import hashlib
import os
from pathlib import Path

from kafka_assets.local.procs import ServiceError, require_tool, run
from kafka_assets.paths import (
    CONNECT_JARS_DIR,
    CONNECT_PLUGINS_DIR,
    JARS_DIR,
    KAFKA_JARS_DIR,
    POM,
    SPARK_JARS_DIR,
)

UDF_SOURCES = POM.parent / "udf" / "src" / "main" / "java"
UDF_JAR = "kafka-assets-udf.jar"
"""The project's own Spark functions (the parse's fast path), beside the Kafka connector."""

# jvm/pom.xml profile -> the folder its <jars.out> names; the two must agree.
OUT_DIRS = {
    "broker": KAFKA_JARS_DIR,
    "spark": SPARK_JARS_DIR,
    "connect": CONNECT_JARS_DIR,
    "debezium": CONNECT_PLUGINS_DIR / "debezium-connector-postgres",
    "jdbc-sink": CONNECT_PLUGINS_DIR / "debezium-connector-jdbc",
}
# Resolved by `make bench` alone: the sink the benchmark compares the pipeline with.
BENCH_PROFILES = ("jdbc-sink",)
PROFILES = tuple(p for p in OUT_DIRS if p not in BENCH_PROFILES)
# Only the local Kafka Connect worker needs these (not when CONNECT_URL names another worker).
CONNECT_PROFILES = ("connect", "debezium")


def _stamp() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()[:16]


def _stamp_file(profile: str) -> Path:
    return JARS_DIR / f".{profile}.resolved"


def resolved(profile: str) -> bool:
    """The pom is unchanged since the last resolution and its jars are still there."""
    stamp = _stamp_file(profile)
    return stamp.exists() and stamp.read_text() == _stamp() and any(OUT_DIRS[profile].glob("*.jar"))


def ensure_jars(profiles=PROFILES, *, quiet: bool = True) -> None:
    """Run `mvn -P <profile> package` for each profile whose jars are missing or stale."""
    mvn = None
    for profile in profiles:
        if resolved(profile):
            continue
        mvn = mvn or require_tool("mvn", "install Maven (Debian: apt-get install maven)")
        out_dir = OUT_DIRS[profile]
        if out_dir.exists():
            for old in out_dir.glob("*.jar"):
                old.unlink()
        cmd = [mvn, "-B", "-f", str(POM), "-P", profile, "package"]
        if quiet:
            cmd.insert(1, "-q")
        env = dict(os.environ)
        try:
            run(cmd, what=f"Maven resolution of the {profile} jars", env=env)
        except ServiceError as exc:
            raise ServiceError(
                f"{exc}\nMaven could not resolve jvm/pom.xml profile '{profile}'. "
                "It needs Maven Central to be reachable (or a populated ~/.m2)."
            ) from exc
        if not any(out_dir.glob("*.jar")):
            raise ServiceError(f"Maven ran but {out_dir} holds no jars")
        _stamp_file(profile).write_text(_stamp())
    if "spark" in profiles:
        build_udf_jar()


def _udf_stamp() -> str:
    digest = hashlib.sha256()
    for source in sorted(UDF_SOURCES.rglob("*.java")):
        digest.update(source.relative_to(UDF_SOURCES).as_posix().encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def build_udf_jar() -> Path:
    """Compile jvm/udf against the Spark of the pyspark wheel, into Spark's jars folder.

    javac with the wheel's own jars on the classpath: the very versions the function runs
    with, and nothing to download. Rebuilt when a source changes.
    """
    from kafka_assets.local.spark_cluster import spark_home

    jar = SPARK_JARS_DIR / UDF_JAR
    stamp = JARS_DIR / ".udf.built"
    if jar.exists() and stamp.exists() and stamp.read_text() == _udf_stamp():
        return jar
    javac = require_tool(
        "javac", "install a JDK 17 (Debian: apt-get install openjdk-17-jdk-headless)"
    )
    jar_tool = require_tool(
        "jar", "install a JDK 17 (Debian: apt-get install openjdk-17-jdk-headless)"
    )
    classes = JARS_DIR / "udf-classes"
    if classes.exists():
        for old in sorted(classes.rglob("*"), reverse=True):
            old.unlink() if old.is_file() else old.rmdir()
    classes.mkdir(parents=True, exist_ok=True)
    sources = [str(p) for p in sorted(UDF_SOURCES.rglob("*.java"))]
    classpath = str(spark_home() / "jars" / "*")
    run(
        [javac, "--release", "17", "-nowarn", "-cp", classpath, "-d", str(classes), *sources],
        what="compiling jvm/udf",
    )
    SPARK_JARS_DIR.mkdir(parents=True, exist_ok=True)
    # Packaged beside, then renamed over: a running JVM keeps reading the jar it opened.
    fresh = SPARK_JARS_DIR / f".{UDF_JAR}.{os.getpid()}"
    run(
        [jar_tool, "--create", "--file", str(fresh), "-C", str(classes), "."],
        what="packaging jvm/udf",
    )
    os.replace(fresh, jar)
    stamp.write_text(_udf_stamp())
    return jar
