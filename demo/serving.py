"""What any serving process does with models from the control topic, whatever runs it (the
Python service in ``demo.server``, each parallel instance of the Flink job in
``demo.flink_job``): apply a descriptor and tell the catalog, score with the version it serves.

- A descriptor it applies is a ``ModelLoaded`` (replacing the version served before, with a
  ``SchemaChanged`` when the output differs); one it cannot load is a ``ModelLoadFailed``, and
  the version served before serves on. The same version with the same bytes again is a
  redelivery: nothing happens.
- ``restored``: the version was served before a restart (a Flink job restored from a
  checkpoint) and is announced with ``ModelLoaded.restored``: serving again, not a new load.
- Artifacts are read only after their bytes hash to the descriptor's ``content_hash``.
  JOBLIB artifacts are pickles, which run code as they load: whoever may write the control
  topic may run code in the server. Restrict it with Kafka's ACLs.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from capture.emitter import Emitter
from capture.events import DataSchema, ModelIdentity, Runtime, SchemaSide
from capture.stats import ScoringRecorder
from capture.typecheck import EventValueError
from demo import descriptor as descriptors
from demo.descriptor import ArtifactFormat, DescriptorError, ModelDescriptor
from demo.model import classify

log = logging.getLogger("demo.serving")

# The output field only some versions write (the demo's version 2 onwards).
PROBABILITY = "probability"


@dataclass
class Live:
    """The version being served."""

    descriptor: ModelDescriptor
    estimator: Any  # a fitted scikit-learn classifier (scikit-learn ships no types)
    identity: ModelIdentity
    output: DataSchema
    recorder: ScoringRecorder

    @property
    def version(self) -> str:
        return self.descriptor.version

    @property
    def with_probability(self) -> bool:
        return any(f.name == PROBABILITY for f in self.output.fields)


@dataclass(frozen=True)
class Applied:
    """What applying one control message did: ``loaded``, ``failed``, ``unchanged`` or
    ``ignored`` (another model's descriptor), with a line for the log."""

    outcome: str
    detail: str


class ModelHost:
    def __init__(
        self,
        emitter: Emitter,
        *,
        model_name: str,
        feature_names: Sequence[str],
        runtime: Runtime,
        inputs: Sequence[str],
        outputs: Sequence[str],
    ) -> None:
        self._emitter = emitter
        self.model_name = model_name
        self.feature_names = tuple(feature_names)
        self._runtime = runtime
        self._inputs = list(inputs)
        self._outputs = list(outputs)
        self.live: Live | None = None

    def apply(self, value: bytes | None, *, restored: bool = False) -> Applied:
        """Apply one control message. Never raises for bad input: a message that is not a
        descriptor is ``failed`` (logged; no catalog event, since it names no version)."""
        try:
            descriptor = descriptors.decode(value)
        except DescriptorError as exc:
            log.error("control message refused (%s): %s", exc.kind, exc)
            return Applied("failed", f"{exc.kind}: {exc}")
        try:
            return self._apply(descriptor, restored=restored)
        except EventValueError as exc:
            # A value the contract refuses to carry (an artifact_location with control
            # characters, say): nothing can be announced of it.
            log.error("descriptor of %s %s refused: %s", descriptor.name, descriptor.version, exc)
            return Applied("failed", f"InvalidDescriptor: {exc}")

    def _apply(self, descriptor: ModelDescriptor, *, restored: bool) -> Applied:
        if descriptor.name != self.model_name:
            return Applied("ignored", f"a descriptor of {descriptor.name}, not {self.model_name}")
        identity = descriptor.identity()  # checked by decode
        old = self.live
        if old is not None and old.identity == identity:
            return Applied("unchanged", f"version {identity.version} is served already")
        try:
            estimator, size = self._load(descriptor)
        except Exception as exc:
            kind = exc.kind if isinstance(exc, DescriptorError) else type(exc).__name__
            reason = f"{exc}"[:2000] or kind
            self._emitter.model_load_failed(identity, reason, kind, descriptor.artifact_location)
            serving = f"version {old.version} serves on" if old else "no version serves"
            return Applied(
                "failed", f"version {identity.version} not loaded ({kind}: {reason}); {serving}"
            )
        published = descriptor.announcement
        announcement = dataclasses.replace(
            published,
            # What this server checked of the artifact, not what the publisher said of it.
            artifact=dataclasses.replace(
                published.artifact,
                uri=descriptor.artifact_location or published.artifact.uri,
                content_hash=descriptor.content_hash,
                size_bytes=size,
            ),
            runtime=self._runtime,
            inputs=self._inputs,
            outputs=self._outputs,
            replaces_version=old.version if old is not None else None,
            restored=restored,
        )
        self._emitter.model_loaded(identity, announcement)
        output = announcement.output_schema
        if old is not None and old.output.fingerprint != output.fingerprint:
            self._emitter.schema_changed(identity, SchemaSide.OUTPUT, output, old.output)
        self.live = Live(
            descriptor, estimator, identity, output, self._emitter.scoring_recorder(identity)
        )
        how = "restored" if restored else "loaded"
        replaces = f", replacing version {old.version}" if old is not None else ""
        return Applied("loaded", f"version {identity.version} {how}{replaces}")

    def _load(self, descriptor: ModelDescriptor) -> tuple[Any, int]:
        """The estimator, and the size of the artifact it was loaded from."""
        if descriptor.artifact_format is not ArtifactFormat.JOBLIB:
            raise DescriptorError(
                "UnsupportedArtifactFormat",
                f"this server loads JOBLIB artifacts, got {descriptor.artifact_format.value}",
            )
        data = _artifact_bytes(descriptor)
        if descriptors.content_hash(data) != descriptor.content_hash:
            # The hash found is not said: for an artifact_location it would tell the catalog
            # the hash of any file this server can read.
            raise DescriptorError(
                "ContentHashMismatch",
                f"the artifact's {len(data):,} bytes do not hash to the descriptor's "
                f"{descriptor.content_hash}: corrupt or tampered with, not loaded",
            )
        import joblib

        estimator = joblib.load(io.BytesIO(data))
        expected = getattr(estimator, "n_features_in_", None)
        if not hasattr(estimator, "predict_proba") or expected != len(self.feature_names):
            raise DescriptorError(
                "IncompatibleModel",
                f"expected a classifier of {len(self.feature_names)} features, got "
                f"{type(estimator).__name__} of {expected}",
            )
        return estimator, len(data)

    def score(self, rows: Sequence[Sequence[float]]) -> list[tuple[int, float]]:
        """(predicted class, its probability) per row, in ``feature_names`` order."""
        assert self.live is not None, "no model is served yet"
        return classify(self.live.estimator, rows)

    def unload(self, reason: str) -> None:
        if self.live is not None:
            self._emitter.model_unloaded(self.live.identity, reason=reason)
            self.live = None


def artifact_verifies(descriptor: ModelDescriptor) -> bool:
    """Whether the artifact can be read and hashes to the descriptor's ``content_hash``
    (nothing is deserialised)."""
    try:
        return descriptors.content_hash(_artifact_bytes(descriptor)) == descriptor.content_hash
    except DescriptorError:
        return False


def _artifact_bytes(descriptor: ModelDescriptor) -> bytes:
    if descriptor.artifact_bytes is not None:
        return descriptor.artifact_bytes
    return _read_location(descriptor.artifact_location or "")


# An artifact larger than this is refused rather than read into memory.
MAX_ARTIFACT_BYTES = 512 * 1024 * 1024


def _read_location(location: str) -> bytes:
    parts = urlsplit(location)
    if parts.scheme != "file":
        raise DescriptorError(
            "UnsupportedArtifactLocation",
            f"this server reads file:// artifact locations, got {location!r}",
        )
    path = Path(unquote(parts.path))
    try:
        info = path.stat()
    except OSError as exc:
        raise DescriptorError("ArtifactUnreadable", f"{location}: {exc.strerror}") from None
    # Not a device, a FIFO or a directory: reading one would block or never end.
    if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_ARTIFACT_BYTES:
        raise DescriptorError(
            "ArtifactUnreadable",
            f"expected a regular file of at most {MAX_ARTIFACT_BYTES:,} bytes at {location}",
        )
    return path.read_bytes()
