"""Apache Flink's Kafka connector for PyFlink jobs, fetched with Maven and cached.

PyFlink itself comes from PyPI (the ``flink`` extra) and runs a local mini cluster in the
job's own JVM; only the connector, which PyFlink does not bundle, is fetched here: the
``flink-sql-connector-kafka`` jar, which carries its Kafka client.
"""

from __future__ import annotations

from pathlib import Path

from local_services.fetch import DEPENDENCY_PLUGIN, read_marker, run_maven, write_marker
from local_services.process import default_cache_dir, file_lock

# Built for Flink 2.2; PyFlink 2.3.0 runs it (tests/test_flink_job.py).
CONNECTOR_VERSION = "5.0.0-2.2"
CONNECTOR = f"org.apache.flink:flink-sql-connector-kafka:{CONNECTOR_VERSION}"


def kafka_connector(cache_dir: Path | None = None) -> Path:
    """The connector jar, fetched on first use."""
    tree = (cache_dir or default_cache_dir()) / f"flink-connector-kafka-{CONNECTOR_VERSION}"
    jar = tree / f"flink-sql-connector-kafka-{CONNECTOR_VERSION}.jar"
    if read_marker(tree) is not None and jar.is_file():
        return jar
    tree.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(tree.parent / f"{tree.name}.lock"):
        if read_marker(tree) is None or not jar.is_file():
            tree.mkdir(exist_ok=True)
            run_maven(
                [
                    f"{DEPENDENCY_PLUGIN}:copy",
                    f"-Dartifact={CONNECTOR}",
                    f"-DoutputDirectory={tree}",
                ],
                what=f"Flink's Kafka connector {CONNECTOR_VERSION} (11 MB)",
                cwd=tree.parent,
            )
            write_marker(tree, {"artifact": CONNECTOR})
    return jar
