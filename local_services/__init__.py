"""Project-owned launchers for the real services the integration tests and demos need.

Apache Kafka (single-node KRaft) and Apicurio Registry (Confluent-compatible API) run as plain
JVM processes on 127.0.0.1; their binaries are fetched with Maven and cached, so no Docker engine
is needed. See `python -m local_services --help`.
"""

from local_services.kafka import KafkaService
from local_services.process import ServiceError, StartResult, Status
from local_services.registry import RegistryService

__all__ = ["KafkaService", "RegistryService", "ServiceError", "StartResult", "Status"]
