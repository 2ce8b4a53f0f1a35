"""What any model artifact on disk tells: where it is, who may read it, what its bytes hash to.

The format readers add what the model file says about itself and return a ``ModelFacts``;
``ModelFacts.model_loaded`` adds what only the server knows (its runtime, its topics) and builds
the event.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypedDict, Unpack
from urllib.parse import urlsplit

from capture.dataschema import data_schema
from capture.events import (
    Artifact,
    DataSchema,
    FeatureSummary,
    FieldSpec,
    Metric,
    ModelLoaded,
    ModelType,
    Runtime,
    Training,
)

StrPath = str | os.PathLike[str]

_CHUNK = 1 << 20


class ArtifactError(ValueError):
    """A model artifact is missing or does not hold what its format promises.

    The message names the file (and the key or element), what was expected and what came.
    """


@dataclass(frozen=True, slots=True)
class Digest:
    """The content identity of an artifact: ``sha256:<hex>`` and the bytes it covers."""

    content_hash: str
    size_bytes: int
    file_count: int


class LoadedOverrides(TypedDict, total=False):
    """ModelLoaded fields a caller may set on top of what the artifact says."""

    model_type: ModelType
    artifact: Artifact
    input_schema: DataSchema
    output_schema: DataSchema
    training: Training
    replaces_version: str | None
    metrics: list[Metric]
    inputs: list[str]
    outputs: list[str]
    owner: str | None
    tags: list[str]
    classifications: list[str]
    properties: dict[str, str]
    training_profile: list[FeatureSummary]


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelFacts:
    """Everything a ModelLoaded carries that the artifact itself can tell.

    ``properties`` keys are prefixed by format (``mlflow.``, ``pmml.``, ``onnx.``) so facts
    from different readers never collide in the catalog. ``training_profile`` is what the
    artifact says of its training data (PMML's ModelStats); where it says nothing, pass the
    trainer's own (``capture.profile.profile_features``) as the ``training_profile`` override.
    """

    model_type: ModelType
    artifact: Artifact
    input_schema: DataSchema
    output_schema: DataSchema
    training: Training = field(default_factory=Training)
    properties: dict[str, str] = field(default_factory=dict)
    training_profile: list[FeatureSummary] = field(default_factory=list)

    def model_loaded(
        self, *, runtime: Runtime, **overrides: Unpack[LoadedOverrides]
    ) -> ModelLoaded:
        """The ModelLoaded payload for a server running this artifact.

        Each override replaces the field it names, except ``properties``, which is merged over
        the artifact's own (the caller's value wins on a shared key): dropping facts the
        artifact recorded just because a caller adds one label would be a surprise. To change
        part of a nested record, replace it from the facts, e.g.
        ``training=dataclasses.replace(facts.training, run_url=url)``.
        """
        unknown = sorted(set(overrides) - LoadedOverrides.__optional_keys__)
        if unknown:
            # Unpack types the keywords for mypy; callers without a type checker still get
            # a clear error instead of a silently ignored keyword.
            raise TypeError(
                f"unexpected ModelLoaded override(s) {unknown}; "
                f"expected some of {sorted(LoadedOverrides.__optional_keys__)}"
            )
        o = overrides
        return ModelLoaded(
            model_type=o.get("model_type", self.model_type),
            artifact=o.get("artifact", self.artifact),
            input_schema=o.get("input_schema", self.input_schema),
            output_schema=o.get("output_schema", self.output_schema),
            runtime=runtime,
            training=o.get("training", self.training),
            replaces_version=o.get("replaces_version"),
            metrics=o.get("metrics", []),
            inputs=o.get("inputs", []),
            outputs=o.get("outputs", []),
            owner=o.get("owner"),
            tags=o.get("tags", []),
            classifications=o.get("classifications", []),
            properties={**self.properties, **o.get("properties", {})},
            training_profile=o.get("training_profile", self.training_profile),
        )


def schema_of(fields: Iterable[FieldSpec], schema_text: str | None, source: Path) -> DataSchema:
    """``data_schema`` with its duplicate-name error turned into one that names the file."""
    try:
        return data_schema(fields, schema_text)
    except ValueError as exc:
        raise ArtifactError(f"{source}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class _Tree:
    files: list[tuple[bytes, Path]]  # (relative POSIX path as bytes, path), sorted
    file_bits: int  # union of the permission bits of all files
    dir_bits: int  # union of the permission bits of all directories, the top one included


def _walk(top: Path, info: os.stat_result) -> _Tree:
    files: list[tuple[bytes, Path]] = []
    file_bits = 0
    dir_bits = 0
    ancestors: set[tuple[int, int]] = set()

    def visit(directory: Path, prefix: str, dir_info: os.stat_result) -> None:
        nonlocal file_bits, dir_bits
        key = (dir_info.st_dev, dir_info.st_ino)
        if key in ancestors:
            raise ArtifactError(
                f"{directory}: a symbolic link loops back to a directory that contains it; "
                "expected a finite tree of files — remove the link"
            )
        ancestors.add(key)
        dir_bits |= stat.S_IMODE(dir_info.st_mode)
        with os.scandir(directory) as entries:
            for entry in entries:
                path = Path(entry.path)
                rel = prefix + entry.name
                try:
                    # Following links is deliberate: a loader opens the target, so the
                    # target's bytes and permissions are what the model is made of.
                    entry_info = entry.stat()
                except FileNotFoundError:
                    raise ArtifactError(
                        f"{path}: a broken symbolic link inside the artifact; expected a file "
                        "or a directory — fix or remove the link"
                    ) from None
                if stat.S_ISDIR(entry_info.st_mode):
                    visit(path, rel + "/", entry_info)
                elif stat.S_ISREG(entry_info.st_mode):
                    file_bits |= stat.S_IMODE(entry_info.st_mode)
                    # surrogateescape keeps names that are not UTF-8 hashable and distinct.
                    files.append((rel.encode("utf-8", "surrogateescape"), path))
                else:
                    raise ArtifactError(
                        f"{path}: neither a regular file nor a directory (a socket, FIFO or "
                        "device); expected only files in a model artifact — move it out"
                    )
        ancestors.discard(key)

    visit(top, "", info)
    files.sort()
    return _Tree(files, file_bits, dir_bits)


def content_digest(path: StrPath) -> Digest:
    """sha256 over an artifact's bytes.

    A file hashes as its bytes alone, so ``sha256sum`` prints the same hex. A directory hashes
    every regular file under it (symbolic links followed) in the byte order of their relative
    POSIX paths, each framed as ``path + NUL + 8-byte big-endian size + bytes``. Names are part
    of the hash because a renamed file changes what a loader finds; the sizes keep file
    boundaries unambiguous. Empty directories do not count.
    """
    top = Path(path)
    info = _stat(top)
    return _digest(top, _walk(top, info) if stat.S_ISDIR(info.st_mode) else None)


def posix_access_mode(path: StrPath) -> str | None:
    """Who can read (and replace) the artifact, from its permission bits.

    ``posix 0640 group-readable`` for a file; for a directory the directory's mode and the
    union of its files' modes, e.g. ``posix dir 0755 files 0644 world-readable``. A
    ``world-writable`` or ``group-writable`` suffix means others can swap the model. Only the
    artifact's own bits are read, not its parent directories' nor ACLs. None where the
    platform has no POSIX modes.
    """
    top = Path(path)
    info = _stat(top)
    return _access_mode(info, _walk(top, info) if stat.S_ISDIR(info.st_mode) else None)


def _digest(top: Path, tree: _Tree | None) -> Digest:
    digest = hashlib.sha256()
    if tree is None:
        with top.open("rb") as stream:
            size = _feed(digest.update, stream)
        return Digest("sha256:" + digest.hexdigest(), size, 1)
    total = 0
    for rel, file in tree.files:
        with file.open("rb") as stream:
            expected = os.fstat(stream.fileno()).st_size
            digest.update(rel + b"\0" + expected.to_bytes(8, "big"))
            size = _feed(digest.update, stream)
        if size != expected:
            raise ArtifactError(
                f"{file}: changed size while being hashed ({expected} then {size} bytes); "
                "expected a finished artifact — hash it after the writer is done"
            )
        total += size
    return Digest("sha256:" + digest.hexdigest(), total, len(tree.files))


def _feed(update: Callable[[bytes], object], stream: BinaryIO) -> int:
    size = 0
    while chunk := stream.read(_CHUNK):
        update(chunk)
        size += len(chunk)
    return size


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        raise ArtifactError(
            f"{path}: no such file or directory; expected the model artifact there"
        ) from None


def _access_mode(info: os.stat_result, tree: _Tree | None) -> str | None:
    if os.name != "posix":
        # Windows reports only a read-only flag in st_mode; a made-up mode would mislead.
        return None
    mode = stat.S_IMODE(info.st_mode)
    if tree is None:
        writable = mode
        group_reads = bool(mode & stat.S_IRGRP)
        world_reads = bool(mode & stat.S_IROTH)
        described = f"posix {mode:04o}"
    else:
        readable, writable = tree.file_bits, tree.file_bits | tree.dir_bits
        # Reading a file inside needs search (x) permission on the directory as well.
        group_reads = bool(readable & stat.S_IRGRP and mode & stat.S_IXGRP)
        world_reads = bool(readable & stat.S_IROTH and mode & stat.S_IXOTH)
        described = f"posix dir {mode:04o} files {tree.file_bits:04o}"
    words = ["world-readable" if world_reads else "group-readable" if group_reads else "owner-only"]
    if writable & stat.S_IWOTH:
        words.append("world-writable")
    elif writable & stat.S_IWGRP:
        words.append("group-writable")
    return " ".join([described, *words])


def artifact_facts(
    path: StrPath,
    *,
    uri: str | None = None,
    access_mode: str | None = None,
    encrypted_at_rest: bool | None = None,
) -> Artifact:
    """The Artifact record of a local file or directory.

    ``uri`` defaults to the ``file://`` URI of the resolved path: symbolic links such as
    ``models/current`` are resolved so the record names the bytes that were hashed, not a
    pointer that can move. Pass ``uri`` when the local copy came from elsewhere (``s3://...``);
    the hash and size still come from the local bytes. ``access_mode`` defaults to the POSIX
    permissions for file URIs and stays None for others, whose access the local bits do not
    describe. ``encrypted_at_rest`` is never guessed.
    """
    local = Path(path)
    info = _stat(local)
    # One walk serves both the hash and the permissions of a directory.
    tree = _walk(local, info) if stat.S_ISDIR(info.st_mode) else None
    digest = _digest(local, tree)
    if uri is None:
        uri = local.resolve().as_uri()
    scheme = urlsplit(uri).scheme
    if not scheme:
        raise ArtifactError(
            f"artifact uri {uri!r} has no scheme; expected e.g. s3://bucket/key or "
            "file:///abs/path — or leave uri unset to use the local path"
        )
    if access_mode is None and scheme == "file":
        access_mode = _access_mode(info, tree)
    return Artifact(
        uri=uri,
        scheme=scheme,
        encrypted_at_rest=encrypted_at_rest,
        access_mode=access_mode,
        size_bytes=digest.size_bytes,
        content_hash=digest.content_hash,
    )
