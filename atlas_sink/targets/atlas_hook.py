"""Apache Atlas through its hook topic: ENTITY_CREATE_V2 notifications on ATLAS_HOOK.

The envelope is the one Atlas's own hooks write (AtlasNotificationMessage around
HookNotification.EntityCreateRequestV2)::

    {version {version "1.0.0", versionParts [1]}, msgCompressionKind "NONE", msgSplitIdx 1,
     msgSplitCount 1, msgSourceIP, msgCreatedBy, msgCreationTime (epoch ms),
     message {type "ENTITY_CREATE_V2", user, entities {entities [...], referredEntities {}}}}

Atlas handles such a message with the same createOrUpdate as ``POST /entity/bulk``
(NotificationHookConsumer), so the entities are the JSON of ``atlas_json``. Unlike REST, the
hook consumer creates shell entities for references it cannot resolve
(atlas.notification.consumer.create.shell.entity.for.non-existing.ref, true by default),
so messages may arrive in any order between keys.

Size: Atlas's hooks keep a message under ``atlas.notification.message.max.length.bytes``
(1,000,000) less 512 bytes; a bigger one is gzipped and base64-encoded, and split in parts
when still too big (AbstractNotification.createNotificationMessages). Here a batch is cut
by entities first, so that every message stands alone; only a single entity too big for
one message takes Atlas's gzip path (AtlasNotificationStringMessage: msgId,
msgCompressionKind GZIP, msgSplitIdx from 0, msgSplitCount), which Atlas's
AtlasNotificationMessageDeserializer reassembles from consecutive parts.

Partitions: Atlas's hooks send no key (ATLAS-4323). Here every entity belongs to a model
(``<model>@<cluster>``) and goes to that model's partition of the topic (``partition_of``),
so one model's changes stay in one partition, in order, and the parts of a split message
stay together. All the models of a partition share its messages, as many entities as fit:
Atlas's cost is per message. A message is keyed by its first model. Entities of no model
(data sets, schemas) travel with the first model entity of the batch referring to them;
their values never change, so their order across partitions does not matter. Unreferenced
ones count as a model of their own qualifiedName.

Classifications reach Atlas only with the entities it creates from these messages: the
hook path cannot attach one to an existing entity (see ``atlas_json``).
"""

from __future__ import annotations

import base64
import getpass
import gzip
import itertools
import logging
import socket
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from atlas_sink.atlas import entity_json
from atlas_sink.atlas.builtin_types import builtin_typedefs
from atlas_sink.atlas.classification_types import ClassificationTypes
from atlas_sink.atlas.client import AtlasClient
from atlas_sink.atlas.entity_json import JsonDict, TypeModel
from atlas_sink.atlas.type_registry import TypeRestorer, ensure_types
from atlas_sink.atlas.typedefs import load_project_typedefs
from atlas_sink.core import naming
from atlas_sink.core.entities import Entity, Ref
from atlas_sink.core.target import Rejection, TargetUnavailable, WriteResult
from atlas_sink.core.translate import DEPLOYMENT, MODEL, MODEL_VERSION, SCHEMA_CHANGE, TRAINING

log = logging.getLogger("servemeta.sink.atlas_hook")

DEFAULT_TOPIC = "ATLAS_HOOK"
ENTITY_CREATE_V2 = "ENTITY_CREATE_V2"
MESSAGE_VERSION: JsonDict = {"version": "1.0.0", "versionParts": [1]}
# atlas.notification.message.max.length.bytes, Atlas's default.
MAX_MESSAGE_BYTES = 1_000_000
# What Atlas keeps free of a message's budget for the envelope (AtlasNotificationBaseMessage
# .MESSAGE_MAX_LENGTH_BYTES); here it also leaves room for Kafka's record overhead and key.
ENVELOPE_RESERVE = 512

# Which name component of a type's qualifiedName is the model's name (see atlas_sink.core.naming).
_MODEL_COMPONENT = {MODEL: 0, MODEL_VERSION: 0, TRAINING: 0, SCHEMA_CHANGE: 0, DEPLOYMENT: 1}


@dataclass(frozen=True)
class Sender:
    """Who the notifications say they come from (msgCreatedBy, message.user, msgSourceIP)."""

    user: str
    created_by: str
    source_ip: str

    @classmethod
    def local(cls, user: str | None = None) -> Sender:
        try:
            process_user = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry, as in some containers
            process_user = "servemeta"
        try:
            # What Atlas's hooks report: Inet4Address.getLocalHost().getHostAddress().
            address = socket.gethostbyname(socket.gethostname())
        except OSError:
            address = ""
        return cls(user=user or process_user, created_by=process_user, source_ip=address)


@dataclass(frozen=True)
class HookMessage:
    key: str
    value: bytes
    refs: tuple[Ref, ...]
    partition: int = 0


def partition_of(key: str, partitions: int) -> int:
    """A model's partition of the hook topic: fixed while the partition count is, so that one
    model's messages keep their order whatever other models share them."""
    return zlib.crc32(key.encode()) % max(partitions, 1)


# -- building messages (pure) ------------------------------------------------------------------


def model_key(entity: Entity) -> str | None:
    """``<model>@<cluster>`` for the entities of one model, None for the others."""
    index = _MODEL_COMPONENT.get(entity.type_name)
    if index is None:
        return None
    components, cluster = naming.split(entity.qualified_name)
    if len(components) <= index or not cluster:
        return None
    return naming.model(components[index], cluster)


def message_keys(entities: Sequence[Entity]) -> dict[Ref, str]:
    keys: dict[Ref, str | None] = {e.ref: model_key(e) for e in entities}
    changed = True
    while changed:
        changed = False
        for entity in entities:
            for target in entity.referenced():
                if target not in keys:
                    continue
                own, other = keys[entity.ref], keys[target]
                if own is not None and other is None:  # referred to by a model's entity
                    keys[target] = own
                    changed = True
                elif own is None and other is not None:  # refers to one that has a key
                    keys[entity.ref] = other
                    changed = True
    return {ref: key if key is not None else ref.qualified_name for ref, key in keys.items()}


def notification(
    entities_json: list[JsonDict], sender: Sender, created_ms: int, message_type: str
) -> JsonDict:
    """AtlasNotificationMessage around one HookNotification, keys in the samples' order."""
    return {
        "version": MESSAGE_VERSION,
        "msgCompressionKind": "NONE",
        "msgSplitIdx": 1,
        "msgSplitCount": 1,
        "msgSourceIP": sender.source_ip,
        "msgCreatedBy": sender.created_by,
        "msgCreationTime": created_ms,
        "message": {
            "type": message_type,
            "user": sender.user,
            "entities": {"entities": entities_json, "referredEntities": {}},
        },
    }


def compressed_parts(raw: bytes, msg_id: str, max_bytes: int = MAX_MESSAGE_BYTES) -> list[bytes]:
    """Atlas's form of a message too big to send as is: gzip, base64, then parts of at most
    ``max_bytes - 512`` characters (AtlasNotificationStringMessage)."""
    limit = max_bytes - ENVELOPE_RESERVE
    encoded = base64.b64encode(gzip.compress(raw, mtime=0)).decode("ascii")
    if len(encoded) <= limit:
        return [entity_json.dumps(_string_message(encoded, msg_id, 1, 1))]
    count = -(-len(encoded) // limit)
    return [
        entity_json.dumps(_string_message(encoded[i * limit : (i + 1) * limit], msg_id, i, count))
        for i in range(count)
    ]


def _string_message(text: str, msg_id: str, index: int, count: int) -> JsonDict:
    return {
        "version": MESSAGE_VERSION,
        "msgId": msg_id,
        "msgCompressionKind": "GZIP",
        "msgSplitIdx": index,
        "msgSplitCount": count,
        "message": text,
    }


def build_messages(
    entities: Sequence[Entity],
    model: TypeModel,
    sender: Sender,
    *,
    created_ms: int,
    max_bytes: int = MAX_MESSAGE_BYTES,
    message_type: str = ENTITY_CREATE_V2,
    msg_ids: Iterator[str] | None = None,
    partitions: int = 1,
) -> list[HookMessage]:
    """Notifications for ``entities``: as few as fit under ``max_bytes``, one partition's
    models sharing each. Atlas's hook consumer pays per message, not per entity (1 entity a
    message: about 20 entities/s; 38: about 330/s), so models travel together; a model's
    entities always go to the partition of its key, which keeps their order."""
    msg_ids = msg_ids or _message_ids()
    limit = max_bytes - ENVELOPE_RESERVE
    ordered = entity_json.topological_order(entities)
    keys = message_keys(ordered)
    groups: dict[int, list[Entity]] = {}
    for entity in ordered:
        groups.setdefault(partition_of(keys[entity.ref], partitions), []).append(entity)
    empty = len(entity_json.dumps(notification([], sender, created_ms, message_type)))
    messages: list[HookMessage] = []

    def emit(partition: int, part: list[Entity]) -> None:
        key = keys[part[0].ref]
        body = notification(
            entity_json.entities_json(part, model), sender, created_ms, message_type
        )
        raw = entity_json.dumps(body)
        refs = tuple(e.ref for e in part)
        if len(raw) <= limit:
            messages.append(HookMessage(key, raw, refs, partition))
        elif len(part) > 1:  # the estimate was short: halve
            middle = len(part) // 2
            emit(partition, part[:middle])
            emit(partition, part[middle:])
        else:
            parts = compressed_parts(raw, next(msg_ids), max_bytes)
            log.info(
                "%s %r alone is %d bytes: sent gzipped in %d part(s)",
                part[0].type_name,
                part[0].qualified_name,
                len(raw),
                len(parts),
            )
            messages.extend(HookMessage(key, p, refs, partition) for p in parts)

    for partition, members in sorted(groups.items()):
        part: list[Entity] = []
        size = empty
        for entity in members:
            entity_bytes = entity_json.entity_size(entity, model)
            if part and size + entity_bytes > limit:
                emit(partition, part)
                part, size = [], empty
            part.append(entity)
            size += entity_bytes
        if part:
            emit(partition, part)
    return messages


def _message_ids() -> Iterator[str]:
    # Atlas's form: a random prefix and a counter (AbstractNotification.getNextMessageId).
    prefix = str(uuid.uuid4())
    return (f"{prefix}_{n}" for n in itertools.count())


# -- the target --------------------------------------------------------------------------------


class AtlasHookTarget:
    """``Target`` producing Atlas hook notifications to Kafka.

    ``write`` returns once Kafka acknowledged every message (acks=all, idempotent producer);
    Atlas applies them later, on its own, and logs what it refuses: no ``Rejection`` can come
    back through Kafka. With ``client`` (Atlas's REST API), the project's types are registered
    over REST, and entities carrying a classification Atlas has no type for (and those
    referring to them) are refused before sending, as the REST target does.
    ``fetch`` reads through ``client`` when given; without it, it returns
    nothing, and deduplication relies on the sink's own cache alone (a restarted sink then
    rewrites the entities of redelivered events: the same values, so the same state).
    """

    name = "atlas-hook"

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topic: str = DEFAULT_TOPIC,
        user: str | None = None,
        config: Mapping[str, Any] | None = None,
        client: AtlasClient | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        delivery_timeout: float = 30.0,
        typedefs: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``config``: extra librdkafka settings (security, say), applied last."""
        if max_message_bytes <= 4 * ENVELOPE_RESERVE:
            raise ValueError(
                f"max_message_bytes={max_message_bytes}: expected well above "
                f"{4 * ENVELOPE_RESERVE}, e.g. Atlas's default {MAX_MESSAGE_BYTES}"
            )
        self.topic = topic
        self.client = client
        self.max_message_bytes = max_message_bytes
        self.delivery_timeout = delivery_timeout
        self.sender = Sender.local(user)
        self.typedefs = dict(typedefs) if typedefs is not None else load_project_typedefs()
        self.model = entity_json.type_model(builtin_typedefs(), self.typedefs)
        self._restore = TypeRestorer(client, self.typedefs) if client is not None else None
        self._classifications = (
            ClassificationTypes(client, self._restore)
            if client is not None and self._restore is not None
            else None
        )
        self._clock = clock
        self._msg_ids = _message_ids()
        self._config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "client.id": "servemeta-atlas-hook",
            # Idempotence with acks=all: a retried send never duplicates or reorders.
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "message.timeout.ms": int(delivery_timeout * 1000),
            "log.connection.close": False,
            "logger": logging.getLogger("servemeta.sink.atlas_hook.librdkafka"),
        }
        self._config.update(config or {})
        self._producer: Producer | None = None
        self._partition_count: int | None = None

    def __repr__(self) -> str:
        return f"AtlasHookTarget({self._config['bootstrap.servers']!r}, topic={self.topic!r})"

    # -- Target --------------------------------------------------------------------------------

    def ensure_types(self) -> None:
        if self.client is not None:
            ensure_types(self.client, self.typedefs)
            return
        log.info(
            "no Atlas REST access given: the types are not checked. Atlas refuses entities of "
            "unknown types; register deploy/atlas/servemeta_typedefs.json once "
            "(POST /api/atlas/v2/types/typedefs) or give the hook target Atlas's URL"
        )

    def fetch(
        self, refs: Sequence[Ref], attribute_names: Sequence[str]
    ) -> dict[Ref, dict[str, Any]]:
        # Kafka cannot be asked what Atlas holds.
        if self.client is None:
            return {}
        return self.client.attributes_of(refs, attribute_names)

    def write(self, entities: Sequence[Entity]) -> WriteResult:
        if not entities:
            return WriteResult()
        rejected: dict[Ref, Rejection] = {}
        if self._classifications is not None and self._restore is not None:
            # Atlas's hook consumer fails a whole message on an entity with an undefined
            # classification (a NullPointerException, logged and skipped): refuse those here.
            self._restore.new_write()
            rejected = self._classifications.refuse_unknown(entities)
            entities = [e for e in entities if e.ref not in rejected]
            if not entities:
                return WriteResult(rejected=rejected)
        messages = build_messages(
            entities,
            self.model,
            self.sender,
            created_ms=int(self._clock() * 1000),
            max_bytes=self.max_message_bytes,
            msg_ids=self._msg_ids,
            partitions=self._partitions(),
        )
        failures: list[KafkaError] = []

        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                failures.append(error)

        producer = self._ensure_producer()
        deadline = time.monotonic() + self.delivery_timeout
        for message in messages:
            self._produce(producer, message, delivered, deadline)
        remaining = producer.flush(max(0.0, deadline - time.monotonic()) + 5.0)
        if failures or remaining:
            if any(f.fatal() for f in failures):
                # A fatal idempotence error leaves the producer unusable: start a new one.
                self._drop_producer()
            first = failures[0].str() if failures else "no acknowledgement in time"
            raise TargetUnavailable(
                f"Kafka did not take {len(failures) + remaining} of {len(messages)} Atlas hook "
                f"messages for topic {self.topic!r} at {self._config['bootstrap.servers']} "
                f"within {self.delivery_timeout:.0f} s ({first}); expected every message "
                "acknowledged. Check the brokers and the topic"
            )
        return WriteResult(written=len(entities), requests=len(messages), rejected=rejected)

    def close(self) -> None:
        if self._producer is not None:
            remaining = self._producer.flush(self.delivery_timeout)
            if remaining:
                log.warning("%d Atlas hook messages undelivered at close", remaining)
            self._producer = None
            self._partition_count = None
        if self.client is not None:
            self.client.close()

    # -- Kafka ---------------------------------------------------------------------------------

    def _ensure_producer(self) -> Producer:
        if self._producer is None:
            try:
                self._producer = Producer(self._config)
            except KafkaException as exc:
                raise ValueError(
                    f"Kafka producer settings refused: {exc}; expected valid librdkafka "
                    "settings for the Atlas hook target"
                ) from None
        return self._producer

    def _partitions(self) -> int:
        """The hook topic's partition count, read once per producer."""
        if self._partition_count is None:
            producer = self._ensure_producer()
            try:
                topic = producer.list_topics(self.topic, timeout=self.delivery_timeout)
                found = topic.topics.get(self.topic)
            except KafkaException as exc:
                raise TargetUnavailable(
                    f"Kafka did not describe the Atlas hook topic {self.topic!r} at "
                    f"{self._config['bootstrap.servers']}: {exc}; expected its partitions"
                ) from None
            if found is None or found.error is not None or not found.partitions:
                raise TargetUnavailable(
                    f"the Atlas hook topic {self.topic!r} has no partitions at "
                    f"{self._config['bootstrap.servers']}"
                    f"{f' ({found.error.str()})' if found and found.error else ''}; expected "
                    "the topic Atlas consumes (atlas.notification.hook.topic.name): create it "
                    "or start Atlas once"
                )
            self._partition_count = len(found.partitions)
        return self._partition_count

    def _drop_producer(self) -> None:
        self._partition_count = None
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.flush(0)

    def _produce(
        self,
        producer: Producer,
        message: HookMessage,
        delivered: Callable[[KafkaError | None, Message], None],
        deadline: float,
    ) -> None:
        while True:
            try:
                producer.produce(
                    self.topic,
                    value=message.value,
                    key=message.key,
                    partition=message.partition,
                    on_delivery=delivered,
                )
                producer.poll(0)
                return
            except BufferError:
                # The local queue is full: let deliveries drain it, up to the deadline.
                if time.monotonic() >= deadline:
                    raise TargetUnavailable(
                        f"the Kafka producer queue for {self.topic!r} stayed full for "
                        f"{self.delivery_timeout:.0f} s; expected the brokers to take messages"
                    ) from None
                producer.poll(0.1)
            except KafkaException as exc:
                raise TargetUnavailable(
                    f"producing an Atlas hook message to {self.topic!r} failed: {exc}"
                ) from None
