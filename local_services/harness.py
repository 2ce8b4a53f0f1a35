"""The pieces the demo, the benchmarks and the tests all need around the real services: topics
(made, read back), waiting for a condition, a sink subprocess's environment, and stopping a
child process.

One copy, so that a fix (an existing topic tolerated, a wait that names what it last saw, a
child's process group killed) reaches every user at once. Nothing here imports atlas_sink: the
sink is only ever a subprocess or the caller's business; confluent-kafka is imported only when a
topic is made or read, so that importing this stays cheap for a ``--help``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from confluent_kafka import Consumer

T = TypeVar("T")

# Whatever the sink, the emitter or their clients read from the environment.
SINK_SETTING_PREFIXES = ("SINK_", "ATLAS_", "KAFKA_", "SCHEMA_REGISTRY_")


class TopicError(RuntimeError):
    """A topic could not be created; the message names the topic, the broker and the cause."""


class WaitTimeout(TimeoutError):
    """A condition did not hold by its deadline; the message says what was awaited and the last
    value seen, which is usually what explains the failure (``last``, for a caller that shows
    it in a form of its own)."""

    def __init__(self, message: str, last: object) -> None:
        super().__init__(message)
        self.last = last


class ChildExited(RuntimeError):
    """The process a wait depended on exited first: waiting longer cannot help, and its exit
    code (``returncode``) and log say more than a timeout would."""

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


# -- topics ------------------------------------------------------------------------------------


def create_topics(
    bootstrap: str,
    topics: Iterable[str],
    *,
    partitions: int = 3,
    config: Mapping[str, str] | None = None,
    client: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
) -> list[str]:
    """Create the ``topics`` that do not exist yet and return the names of those created.

    Explicit topics rather than the broker's auto-creation: the partition count decides how a
    consumer group shares the work, and a test or figure must not depend on the broker's
    default. An existing topic is left alone, so a rerun (the demo keeps its topics) is no
    error. ``client`` adds librdkafka settings (security, log level) to the admin client.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    names = list(dict.fromkeys(topics))
    if not names:
        return []
    admin = AdminClient({"bootstrap.servers": bootstrap, **(client or {})})
    futures = admin.create_topics(
        [
            NewTopic(
                name, num_partitions=partitions, replication_factor=1, config=dict(config or {})
            )
            for name in names
        ]
    )
    created: list[str] = []
    for name in names:
        try:
            futures[name].result(timeout)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise TopicError(f"cannot create topic {name!r} on {bootstrap}: {exc}") from None
        except TimeoutError:
            raise TopicError(
                f"cannot create topic {name!r} on {bootstrap}: no answer within {timeout:g} s; "
                "expected a running broker there"
            ) from None
        created.append(name)
    return created


def topic_reader(
    bootstrap: str,
    topics: Sequence[str],
    *,
    prefix: str = "reader",
    client: Mapping[str, Any] | None = None,
) -> Consumer:
    """A consumer subscribed to ``topics`` from their beginning, in a group of its own that
    commits nothing: reading back what a run produced must neither move nor depend on the
    offsets of the consumer groups under test. The caller closes it."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{prefix}-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **(client or {}),
        }
    )
    consumer.subscribe(list(topics))
    return consumer


class GroupOffsets:
    """The end offsets of ``topic`` and what consumer group ``group`` committed there, read
    without joining the group. A drained backlog is a lag of 0, a fact the broker knows: a
    caller waits for it instead of guessing with a sleep. Close it (or use ``with``)."""

    def __init__(
        self, bootstrap: str, topic: str, group: str, *, client: Mapping[str, Any] | None = None
    ) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.topic = topic
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                **(client or {}),
            }
        )
        metadata = self._consumer.list_topics(topic, timeout=10)
        self.partitions = [
            TopicPartition(topic, p) for p in sorted(metadata.topics[topic].partitions)
        ]

    def ends(self) -> dict[int, int]:
        return {
            tp.partition: self._consumer.get_watermark_offsets(tp, timeout=10)[1]
            for tp in self.partitions
        }

    def committed(self) -> dict[int, int]:
        """Per partition, the group's committed offset (0 where it committed nothing yet)."""
        found = self._consumer.committed(self.partitions, timeout=10)
        return {tp.partition: max(tp.offset, 0) for tp in found}

    def lag(self) -> int:
        """Messages not yet committed; where the group committed nothing, counted from the
        partition's first kept message (retention may have removed older ones)."""
        by_number = {tp.partition: tp for tp in self.partitions}
        lag = 0
        for tp in self._consumer.committed(self.partitions, timeout=10):
            low, high = self._consumer.get_watermark_offsets(by_number[tp.partition], timeout=10)
            lag += max(high - (tp.offset if tp.offset >= 0 else low), 0)
        return lag

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> GroupOffsets:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# -- waiting -----------------------------------------------------------------------------------


def wait_for(
    what: str,
    probe: Callable[[], T],
    timeout: float,
    interval: float = 0.1,
    *,
    until: Callable[[T], object] = bool,
    between: Callable[[], object] | None = None,
    context: Callable[[], str] | None = None,
    max_interval: float | None = None,
    process: subprocess.Popen[Any] | None = None,
) -> T:
    """Call ``probe`` until ``until`` accepts its value (truthy by default) and return that value;
    raise ``WaitTimeout`` once ``timeout`` seconds have passed.

    Polling with a deadline instead of sleeping a fixed time: a run is as quick as the services
    allow, and a slow machine fails with a reason instead of a flaky assertion. ``between`` is
    what to do between probes instead of sleeping ``interval`` (step an in-process sink, read
    the next log line); ``max_interval`` lets the pause grow towards it, for a probe that costs
    the service something (a REST call to Atlas). ``context`` adds what the probe's value does
    not show (a log tail, a sink's totals) to the failure. ``process`` is a child the condition
    depends on: its exit ends the wait at once with ``ChildExited``, as does any exception of
    ``probe``.
    """
    deadline = time.monotonic() + timeout
    pause = interval
    while True:
        value = probe()
        if until(value):
            return value
        if process is not None and process.poll() is not None:
            extra = f"; {context()}" if context is not None else ""
            raise ChildExited(
                f"process {process.pid} exited with code {process.returncode} while waiting "
                f"for {what}{extra}",
                process.returncode,
            )
        left = deadline - time.monotonic()
        if left <= 0:
            extra = f"; {context()}" if context is not None else ""
            raise WaitTimeout(
                f"timed out after {timeout:g} s waiting for {what}; last seen: {value!r}{extra}",
                value,
            )
        if between is not None:
            between()
        else:
            time.sleep(min(pause, left))
            if max_interval is not None:
                pause = min(pause * 1.5, max_interval)


# -- a sink subprocess's environment -----------------------------------------------------------


def child_environment(
    base: Mapping[str, str] | None = None, *, keep: Sequence[str] = ()
) -> dict[str, str]:
    """``base`` (the process's own environment by default) without the sink's and the clients'
    settings, except names that start with one of ``keep``.

    A child must do what its caller set up, not what a shell's leftover SINK_CONFIG_FILE or
    ATLAS_URL says. ``keep`` lets a caller that deliberately forwards the user's connection
    settings (the demo against a secured broker) name them.
    """
    source = os.environ if base is None else base
    return {
        name: value
        for name, value in source.items()
        if not name.startswith(SINK_SETTING_PREFIXES) or name.startswith(tuple(keep))
    }


def sink_environment(
    bootstrap: str,
    topics: str | Sequence[str],
    *,
    group: str | None = None,
    dlq_topic: str | None = None,
    catalog: Path | str | None = None,
    atlas_url: str | None = None,
    atlas_auth: tuple[str, str] | None = None,
    registry_url: str | None = None,
    base: Mapping[str, str] | None = None,
    settings: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of ``python -m atlas_sink`` for these topics: ``child_environment(base)``
    with the sink's settings on top (``base={}``: the settings alone, to set in-process).

    ``catalog`` makes the target the embedded catalog, ``atlas_url`` Atlas's REST API; with
    neither the sink's own default (or its command line) decides. /metrics listens on any free
    loopback port, since another sink (the user's, a parallel test's) may hold the default one.
    ``settings`` are further variables as the sink reads them (``{"SINK_RETRY_MAX_SECONDS": "1"}``).
    """
    if catalog is not None and atlas_url is not None:
        raise ValueError("a sink writes either the embedded catalog or Atlas, not both")
    env = child_environment(base)
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "SINK_TOPICS": topics if isinstance(topics, str) else ",".join(topics),
            "SINK_METRICS_HOST": "127.0.0.1",
            "SINK_METRICS_PORT": "0",
        }
    )
    if group is not None:
        env["SINK_GROUP_ID"] = group
    if dlq_topic is not None:
        env["SINK_DLQ_TOPIC"] = dlq_topic
    if registry_url is not None:
        env["SCHEMA_REGISTRY_URL"] = registry_url
    if catalog is not None:
        env["SINK_TARGET"] = "local"
        env["SINK_CATALOG_PATH"] = str(catalog)
    if atlas_url is not None:
        env["SINK_TARGET"] = "atlas-rest"
        env["ATLAS_URL"] = atlas_url
        if atlas_auth is not None:
            env["ATLAS_USERNAME"], env["ATLAS_PASSWORD"] = atlas_auth
    env.update(settings or {})
    return env


# -- stopping a child --------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30.0) -> int | None:
    """SIGTERM ``proc`` and return its exit code; SIGKILL it (its whole process group when it
    leads one) after ``timeout`` seconds and return None.

    SIGTERM first because that is what a deployment sends: the sink and the demo server then
    finish their batch, commit and leave the consumer group, which is what the callers check.
    The process group goes too because a child started in a session of its own may have
    children of its own that would outlive it.
    """
    if proc.poll() is not None:
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    leads_group = False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        leads_group = os.getpgid(proc.pid) == proc.pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if leads_group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    proc.wait()
    return None
