"""The emitter's optional disk spool: events the broker cannot take now wait on disk, in order.

Off by default (``EmitterConfig.spool_dir`` / ``SERVEMETA_SPOOL_DIR`` turns it on). The emitter
uses it from its background thread only, never from the serving path.

Layout: one directory per emitter, holding ``spool.lock`` (an exclusive ``flock`` for as long
as the emitter lives, so two processes never interleave frames) and segment files
``<number>.seg``, oldest first. A segment starts with ``MAGIC``, then frames::

    length  u32 big-endian   length of the body
    crc     u32 big-endian   zlib.crc32 of the body
    body    u16 big-endian key length, the key, the value

The value is the Kafka message exactly as it would have been sent (framing header included),
so a frame is re-sent as it is, by a later instance too: its envelope keeps the producer
instance and sequence it was made with, which is what the sink's watermarks key on.

Durability (the fsync policy): frames are written with one ``write()`` each, so a crash of
the serving process loses nothing already appended (the kernel holds it); the emitter calls
``sync()`` (one ``fsync``) after each batch it appends, at most once per pass of its
background thread, and the directory is fsynced when a segment is created. A power loss or OS
crash can therefore lose at most the last batch; the torn frame it may leave is found by its
length or CRC at the next start and truncated away, with what follows it in that segment.

Frames are acknowledged by token (their position in the spool since it was opened). A
segment is deleted once every frame in it is acknowledged; the position inside a segment is
not persisted, so after a restart the oldest segment's frames are sent again from its
start: at-least-once, which the sink absorbs (event ids and watermarks).
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from capture.config import ConfigError

log = logging.getLogger("servemeta.capture.spool")

MAGIC = b"SMSPOOL1"
SUFFIX = ".seg"
LOCK_NAME = "spool.lock"
_HEADER = struct.Struct(">II")
_KEY_LENGTH = struct.Struct(">H")
# A frame longer than this is taken for garbage when scanning (Kafka's own default message
# limit is 1 MiB; this leaves room for raised limits).
MAX_FRAME_BYTES = 64 * 1024 * 1024
# Bytes read per pread() when sending frames back: many frames per system call.
_READ_CHUNK = 256 * 1024

Appended = Literal["ok", "full", "error"]


class SpoolInUse(ConfigError):
    """Another live emitter holds the spool directory."""


class Frame(NamedTuple):
    token: int
    key: bytes
    value: bytes


@dataclass(slots=True)
class _Segment:
    number: int
    path: Path
    size: int  # bytes in the file, MAGIC included
    first: int  # token of its first frame
    frames: int

    @property
    def end(self) -> int:
        """Token after its last frame."""
        return self.first + self.frames


def frame_bytes(key: bytes, value: bytes) -> bytes:
    body = _KEY_LENGTH.pack(len(key)) + key + value
    return _HEADER.pack(len(body), zlib.crc32(body)) + body


class Spool:
    """An append-only, bounded sequence of frames in ``directory``; single-threaded use."""

    def __init__(
        self, directory: str | Path, max_bytes: int, *, segment_bytes: int | None = None
    ) -> None:
        if max_bytes <= 0:
            raise ConfigError(f"spool_max_bytes must be positive, got {max_bytes!r}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        # Space is freed a segment at a time: small segments against a small bound.
        self.segment_bytes = segment_bytes or min(max(max_bytes // 16, 4096), 8 * 1024 * 1024)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock(self.directory)
        self._segments: list[_Segment] = []
        # Segment numbers only grow, so a new file never takes the name of one just deleted.
        self._last_number = 0
        self._write_fd: int | None = None  # open on the last segment, when appending to it
        self._read_fd: int | None = None
        self._read_segment: _Segment | None = None
        self._read_offset = 0
        self._read_token = 0  # token of the next frame read()
        self._acked_upto = 0  # every token below this one is acknowledged
        self._acked: set[int] = set()  # acknowledged tokens above _acked_upto
        self._dirty = False
        # Frames lost to corruption: found at start (truncated) or when reading back.
        self.truncated_bytes = 0
        self.lost_frames = 0
        try:
            self._next_token = self._scan()
        except BaseException:
            os.close(self._lock_fd)
            raise
        # Found at start: events of an earlier instance, sent before anything new.
        self.recovered = self._next_token

    # -- state -------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Frames on disk not yet acknowledged."""
        return self._next_token - self._acked_upto - len(self._acked)

    @property
    def unsent(self) -> int:
        """Frames not yet handed out by read()."""
        return self._next_token - self._read_token

    @property
    def empty(self) -> bool:
        return self._next_token == self._acked_upto

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    # -- writing -----------------------------------------------------------------------------

    def append(self, key: bytes, value: bytes) -> Appended:
        """Append one frame: "ok", "full" (it would exceed max_bytes) or "error" (the disk
        refused it; nothing of it is left in the file)."""
        frame = frame_bytes(key, value)
        active = self._segments[-1] if self._segments and self._write_fd is not None else None
        new_segment = active is None or (
            active.frames > 0 and active.size + len(frame) > self.segment_bytes
        )
        if self.size_bytes + len(frame) + (len(MAGIC) if new_segment else 0) > self.max_bytes:
            return "full"
        try:
            if new_segment:
                active = self._new_segment()
            assert active is not None and self._write_fd is not None
            written = os.write(self._write_fd, frame)
            if written != len(frame):
                raise OSError(f"short write: {written} of {len(frame)} bytes")
        except OSError as exc:
            log.error("cannot write to the spool in %s: %s", self.directory, exc)
            self._undo_partial_write()
            return "error"
        active.size += len(frame)
        active.frames += 1
        self._next_token += 1
        self._dirty = True
        return "ok"

    def sync(self) -> None:
        """Make what was appended durable (one fsync of the segment being written)."""
        if self._dirty and self._write_fd is not None:
            try:
                os.fsync(self._write_fd)
            except OSError as exc:
                log.error("cannot fsync the spool in %s: %s", self.directory, exc)
        self._dirty = False

    def _new_segment(self) -> _Segment:
        self._close_write_fd()
        number = self._last_number + 1
        path = self.directory / f"{number:016d}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            os.write(fd, MAGIC)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._write_fd = fd
        self._last_number = number
        # The file's name must survive a power loss, or its frames go with it.
        _fsync_directory(self.directory)
        segment = _Segment(number, path, len(MAGIC), self._next_token, 0)
        self._segments.append(segment)
        return segment

    def _undo_partial_write(self) -> None:
        """Cut whatever a failed write left, so no torn frame sits before later ones."""
        if self._write_fd is None or not self._segments:
            return
        active = self._segments[-1]
        try:
            os.ftruncate(self._write_fd, active.size)
        except OSError:
            # Cannot repair this file: later frames go to a new segment, and the torn tail
            # is cut at the next start.
            self._close_write_fd()

    # -- reading back ------------------------------------------------------------------------

    def read(self, limit: int) -> list[Frame]:
        """The next ``limit`` frames at most, oldest first; each must later be ack()ed."""
        frames: list[Frame] = []
        while len(frames) < limit and self._read_token < self._next_token:
            segment = self._current_read_segment()
            if segment is None:
                break
            if self._read_token >= segment.end:
                self._advance_read_segment()
                continue
            assert self._read_fd is not None
            remaining = segment.size - self._read_offset
            try:
                data = os.pread(self._read_fd, min(remaining, _READ_CHUNK), self._read_offset)
                first = _parse(data, 0)
                if first is not None and len(data) < first[0] <= remaining:
                    # One frame longer than a chunk: read it whole.
                    data = os.pread(self._read_fd, first[0], self._read_offset)
            except OSError as exc:
                self._lose_rest_of(segment, f"cannot read it back: {exc}")
                continue
            offset = 0
            while len(frames) < limit and self._read_token < segment.end:
                parsed = _parse(data, offset)
                if parsed is None or parsed[0] > len(data):
                    break
                end, key, value = parsed
                frames.append(Frame(self._read_token, key, value))
                self._read_token += 1
                offset = end
            if offset == 0:
                # Not one whole frame where this process wrote (or found) one: the file was
                # changed under it.
                self._lose_rest_of(segment, "a frame written earlier no longer checks out")
                continue
            self._read_offset += offset
        return frames

    def _current_read_segment(self) -> _Segment | None:
        if self._read_segment is None:
            candidates = [s for s in self._segments if s.end > self._read_token]
            if not candidates:
                return None
            self._open_read(candidates[0])
        return self._read_segment

    def _open_read(self, segment: _Segment) -> None:
        self._close_read_fd()
        self._read_fd = os.open(segment.path, os.O_RDONLY)
        self._read_segment = segment
        self._read_offset = len(MAGIC)

    def _advance_read_segment(self) -> None:
        self._close_read_fd()
        self._read_segment = None

    def _lose_rest_of(self, segment: _Segment, why: str) -> None:
        lost = segment.end - self._read_token
        log.error("spool segment %s: %s; its last %d frames are lost", segment.path, why, lost)
        self.lost_frames += lost
        for token in range(self._read_token, segment.end):
            self.ack(token)
        self._read_token = segment.end
        self._advance_read_segment()

    # -- acknowledging -----------------------------------------------------------------------

    def ack(self, token: int) -> None:
        """The frame is done with (delivered, or refused for good): its space may go."""
        if token < self._acked_upto:
            return
        self._acked.add(token)
        while self._acked_upto in self._acked:
            self._acked.discard(self._acked_upto)
            self._acked_upto += 1
        self._release()

    def _release(self) -> None:
        everything = self._acked_upto == self._next_token
        deleted = False
        while self._segments:
            oldest = self._segments[0]
            if oldest.end > self._acked_upto:
                break
            if oldest is self._segments[-1] and self._write_fd is not None and not everything:
                break
            if oldest is self._read_segment:
                self._advance_read_segment()
            if oldest is self._segments[-1]:
                self._close_write_fd()
            self._segments.pop(0)
            deleted = True
            try:
                oldest.path.unlink(missing_ok=True)
            except OSError as exc:
                log.error("cannot delete the sent spool segment %s: %s", oldest.path, exc)
        if deleted and not self._segments:
            # Emptied: make the deletions durable, or a power loss would resurrect (and
            # re-send) what was delivered.
            _fsync_directory(self.directory)

    # -- opening and closing -----------------------------------------------------------------

    def _scan(self) -> int:
        """Index the segments left by an earlier instance; cut torn or corrupt tails."""
        token = 0
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            stem = path.name[: -len(SUFFIX)]
            if not stem.isdigit():
                continue
            # Past every name found, also of files set aside: a new segment never collides.
            self._last_number = max(self._last_number, int(stem))
            try:
                data = path.read_bytes()
            except OSError as exc:
                log.error("cannot read spool segment %s (%s); leaving it aside", path, exc)
                _set_aside(path)
                continue
            if not data.startswith(MAGIC):
                if MAGIC.startswith(data):  # created, then cut off before its first frame
                    path.unlink(missing_ok=True)
                    continue
                log.error("%s is not a spool segment (no %r header); leaving it aside", path, MAGIC)
                _set_aside(path)
                continue
            offset, frames = len(MAGIC), 0
            while offset < len(data):
                parsed = _parse(data, offset)
                if parsed is None or parsed[0] > len(data):
                    break
                offset = parsed[0]
                frames += 1
            if offset < len(data):
                cut = len(data) - offset
                log.warning(
                    "spool segment %s ends in %d bytes that are not a whole, intact frame "
                    "(an interrupted write, or corruption); truncating them",
                    path,
                    cut,
                    extra={"frames_kept": frames},
                )
                self.truncated_bytes += cut
                try:
                    os.truncate(path, offset)
                except OSError as exc:
                    log.error("cannot truncate %s: %s; leaving it aside", path, exc)
                    _set_aside(path)
                    continue
            if frames == 0:
                path.unlink(missing_ok=True)
                continue
            self._segments.append(_Segment(int(stem), path, offset, token, frames))
            token += frames
        if self._segments:
            log.info(
                "spool holds %d events from an earlier run; they are sent first",
                token,
                extra={"directory": str(self.directory), "bytes": self.size_bytes},
            )
        return token

    def close(self) -> None:
        """Sync and release the directory; unacknowledged frames stay for the next start."""
        self.sync()
        self._close_write_fd()
        self._close_read_fd()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def _close_write_fd(self) -> None:
        if self._write_fd is not None:
            if self._dirty:
                self.sync()
            os.close(self._write_fd)
            self._write_fd = None

    def _close_read_fd(self) -> None:
        if self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None
        self._read_segment = None


def _parse(data: bytes, offset: int) -> tuple[int, bytes, bytes] | None:
    """(end offset, key, value) of the frame at ``offset``; None if it is not a valid frame.
    An end beyond ``data`` means the frame's header is valid but its body was not read."""
    if len(data) - offset < _HEADER.size:
        return None
    length, crc = _HEADER.unpack_from(data, offset)
    if length < _KEY_LENGTH.size or length > MAX_FRAME_BYTES:
        return None
    start = offset + _HEADER.size
    end = start + length
    if end > len(data):
        return end, b"", b""
    body = data[start:end]
    if zlib.crc32(body) != crc:
        return None
    (key_length,) = _KEY_LENGTH.unpack_from(body)
    if _KEY_LENGTH.size + key_length > length:
        return None
    key_end = _KEY_LENGTH.size + key_length
    return end, body[_KEY_LENGTH.size : key_end], body[key_end:]


def _lock(directory: Path) -> int:
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpoolInUse(
            f"the spool directory {directory} is in use by another emitter (it holds "
            f"{directory / LOCK_NAME}); give each emitter its own SERVEMETA_SPOOL_DIR"
        ) from None
    return fd


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _set_aside(path: Path) -> None:
    try:
        path.rename(path.with_name(path.name + ".corrupt"))
    except OSError as exc:
        log.error("cannot rename %s aside: %s", path, exc)
