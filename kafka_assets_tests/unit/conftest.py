"""Unit-test fixtures: a plain local Spark session (no Kafka connector, no services)."""

import pytest


@pytest.fixture(scope="session")
def spark():
    """One small local SparkSession for all unit tests; starting the JVM takes ~10 s.

    It overrides the top-level `spark` fixture for unit tests, which needs the Kafka connector
    jars: the transforms and the IO manager helpers run on batch DataFrames and need none. The
    project's own Java function (the parse's fast path) is on its classpath: compiled from
    jvm/udf by javac, nothing downloaded. If a session is already running (integration tests ran
    first in this process), it is reused and left to its owner to stop.
    """
    from pyspark.sql import SparkSession

    from kafka_assets.local.jars import build_udf_jar

    existing = SparkSession.getActiveSession()
    session = (
        SparkSession.builder.master("local[1]")
        .appName("kafka-assets-unit")
        .config("spark.driver.extraClassPath", str(build_udf_jar()))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    yield session
    if existing is None:
        session.stop()
