# One image for the three Dagster services in docker-compose.yml (user-code, dagster-webserver,
# dagster-daemon). The Kafka broker runs in its own container, so only Spark's Kafka connector
# jars are resolved here (Maven profile "spark"), not the broker jars (profile "broker").
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home

# Java 17 runs Spark (pyspark 4.x needs Java 17+); maven resolves the connector jars; javac
# (the JDK) compiles the project's own Spark function in jvm/udf (the parse's fast path).
# procps provides `ps`, which Spark's launcher scripts call. The man1 directory works around
# the JRE's postinst on slim images, which strip /usr/share/man.
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jdk-headless maven procps \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/dagster/app

# Jars first: this layer is rebuilt only when jvm/pom.xml changes. The pom writes to
# ../.local/jars/spark, i.e. /opt/dagster/app/.local/jars/spark, which the Spark resource puts on
# the driver classpath (relative to the project root). .dockerignore keeps the host's .local/ out.
COPY jvm/pom.xml jvm/pom.xml
RUN mvn -q -B -f jvm/pom.xml -P spark package \
    && ls .local/jars/spark/*.jar > /dev/null \
    && rm -rf /root/.m2 jvm/target

# Editable install: kafka_assets/paths.py finds the project root (and so .local/jars/spark) from
# the package's own location, which must therefore stay /opt/dagster/app/kafka_assets.
COPY . /opt/dagster/app
RUN pip install -e . \
    && python -c "from kafka_assets.local.jars import build_udf_jar; build_udf_jar()" \
    && mkdir -p "$DAGSTER_HOME" /opt/dagster/state \
    && cp docker/dagster.yaml "$DAGSTER_HOME/dagster.yaml"

# Overridden per service in docker-compose.yml.
EXPOSE 3000 4000
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", \
     "-d", "/opt/dagster/app", "-m", "kafka_assets.definitions"]
