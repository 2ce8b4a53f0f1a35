"""Qualified names: one documented convention, reversible, safe for any character in names.

Atlas matches entities by ``qualifiedName``, so the same model must always get the same name
and two different models never the same one. Each name component is percent-encoded (RFC 3986
unreserved characters kept, except ``.``), components are joined with ``.``, and the cluster
follows ``@`` -- Atlas's own ``name@namespace`` shape:

=====================  ==========================================  ============================
entity                 qualifiedName                               example
=====================  ==========================================  ============================
model                  ``<model>@<cluster>``                       ``wine@prod``
model version          ``<model>.<version>@<cluster>``             ``wine.3@prod``
training run           ``<model>.<version>.training@<cluster>``    ``wine.3.training@prod``
serving deployment     ``<server>.<model>@<cluster>``              ``scorer.wine@prod``
data schema            ``<fingerprint>@<cluster>``                 ``sha256%3Aab12...@prod``
schema of a data set   ``<fingerprint>.of.<data set qn>@<c>``      ``sha256%3Aab12.of.s3...@prod``
schema change          ``<model>.<version>.<side>.<micros>@<c>``   ``wine.3.output.17...@prod``
Kafka topic            ``<topic lower-case>@<cluster>``            ``wine-requests@prod``
(Atlas's convention)
file, HDFS, S3, other  ``<uri>@<cluster>``                         ``s3://b/k@prod``
=====================  ==========================================  ============================

Kafka topics and paths follow Atlas's own hooks, so entities the Kafka, Hive or Spark hooks
create are the same entities here.
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import quote, unquote

# Unreserved characters stay readable; '.' and '@' are separators, so they are encoded.
_SAFE = "-_~"


@lru_cache(maxsize=65_536)
def component(value: str) -> str:
    # quote() never encodes '.', whatever ``safe`` says; it is our separator, so we do.
    return quote(value, safe=_SAFE).replace(".", "%2E")


def qualified(components: list[str], cluster: str) -> str:
    return ".".join(component(c) for c in components) + "@" + component(cluster)


def split(qualified_name: str) -> tuple[list[str], str]:
    """The inverse of ``qualified`` (for names this module made)."""
    body, _, cluster = qualified_name.rpartition("@")
    return [unquote(c) for c in body.split(".")], unquote(cluster)


@lru_cache(maxsize=65_536)
def model(name: str, cluster: str) -> str:
    return qualified([name], cluster)


@lru_cache(maxsize=65_536)
def model_version(name: str, version: str, cluster: str) -> str:
    return qualified([name, version], cluster)


@lru_cache(maxsize=65_536)
def training(name: str, version: str, cluster: str) -> str:
    return qualified([name, version, "training"], cluster)


@lru_cache(maxsize=65_536)
def deployment(server_name: str, model_name: str, cluster: str) -> str:
    return qualified([server_name, model_name], cluster)


@lru_cache(maxsize=65_536)
def serving_stats(server_name: str, model_name: str, version: str, cluster: str) -> str:
    """The live figures of one model version on one deployment."""
    return qualified([server_name, model_name, version, "stats"], cluster)


@lru_cache(maxsize=65_536)
def data_schema(fingerprint: str, cluster: str) -> str:
    return qualified([fingerprint], cluster)


@lru_cache(maxsize=65_536)
def source_schema(fingerprint: str, dataset_qualified_name: str, cluster: str) -> str:
    """A data set's own copy of a schema: the one entity whose ``describes`` is that data set.

    Shared by fingerprint, two data sets would contend for one ``describes`` link, and events
    of two models have no order between them, so a replay could link it differently."""
    return qualified([fingerprint, "of", dataset_qualified_name], cluster)


def schema_change(name: str, version: str, side: str, event_micros: int, cluster: str) -> str:
    return qualified([name, version, side.lower(), str(event_micros)], cluster)


@lru_cache(maxsize=65_536)
def kafka_topic(topic: str, cluster: str) -> str:
    # Atlas's Kafka hook: lower-case topic, '@', metadata namespace, no encoding.
    return f"{topic.lower()}@{cluster}"


@lru_cache(maxsize=65_536)
def uri_dataset(uri: str, cluster: str) -> str:
    # Atlas's hooks name paths '<uri>@<namespace>' without encoding; so do we, to meet them.
    return f"{uri}@{cluster}"
