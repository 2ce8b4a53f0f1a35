"""Apache Atlas 2.4 over its REST API v2: types, bulk upserts, reads for dedup and the CLI.

How Atlas answers decides what the sink does (``classify``, pure):

- 2xx: done.
- 401/403: the credentials are wrong or lack a right; no write can succeed, so
  ``TargetAuthError`` stops the sink with that message.
- Connection errors, timeouts, 408, 429, 5xx: retried with exponential backoff and jitter,
  then ``TargetUnavailable``. JanusGraph lock conflicts between concurrent writers are among
  them: JanusGraphException / PermanentLockingException are not AtlasBaseExceptions, so
  Atlas's AllExceptionMapper answers a bare 500 ("There was an error processing your
  request. It has been logged (ID ...)"); when one is wrapped in an AtlasBaseException its
  text shows in errorMessage/errorCause, and any status carrying it is retried. Atlas's hook
  consumer retries the same two exception classes (NotificationHookConsumer).
  ATLAS-500-00-006 (another import/export holds the lock) comes as 409 and is retried too.
- Other 4xx with an Atlas error ({errorCode, errorMessage}): something in the request is
  refused. The batch is bisected until the refused entities stand alone; each comes back
  as a ``Rejection`` (code ATLAS-404-00-007, say) while the rest is written.
- 404 or 3xx without an Atlas error: no Atlas answered (a proxy, a wrong path, a login
  redirect): retried, then ``TargetUnavailable`` naming what answered; never blamed on data.

Retrying a bulk POST is safe: it is an upsert of absolute values, so one applied twice
leaves the same state.

What the real server (Atlas 2.1.0 with 2.4.0's models) showed, and the target does about it:

- An entity carrying a classification Atlas has no type for is not refused with a 4xx: the
  bulk write fails with a bare 500 (a NullPointerException in EntityGraphMapper
  .createClassificationVertex), which looks like a lock conflict and would be retried forever.
  So classification names are confirmed first (``GET /types/classificationdef/name/<n>``,
  once per name), and entities carrying an unknown one are refused with Atlas's answer to
  that (404 ATLAS-404-00-001), together with the entities of the batch referring to them.
  After a write that ran out of retries, the names are confirmed again.
- An Atlas without the project's types (a new or reset server) refuses every entity with 400
  ATLAS-400-00-014. When that error names one of the project's types, the target registers
  the types again and repeats the request, once per write, instead of dead-lettering it all.

The password is held by the session's auth object only; it is never logged, never in a
message and never in ``repr``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import requests
from requests.auth import HTTPBasicAuth

from atlas_sink.atlas import entity_json
from atlas_sink.atlas.builtin_types import builtin_typedefs
from atlas_sink.atlas.typedefs import (
    MissingBuiltinTypes,
    TypedefConflict,
    load_project_typedefs,
    merge,
    missing_builtins,
    plan_typedefs,
    type_names,
)
from atlas_sink.core.entities import Entity, Ref
from atlas_sink.core.target import Rejection, TargetAuthError, TargetUnavailable, WriteResult
from atlas_sink.core.translate import ATLAS_RELATIONSHIPS_WRITTEN, ATLAS_TYPES_WRITTEN

log = logging.getLogger("servemeta.sink.atlas_rest")

API = "/api/atlas/v2"
USER_AGENT = "servemeta-atlas-sink"

# Texts by which a JanusGraph lock conflict shows in an Atlas error.
LOCK_MARKERS = (
    "PermanentLockingException",
    "TemporaryLockingException",
    "JanusGraphException",
    "Lock expired",
    "Could not commit transaction",
)
# Atlas error codes that mean "try again" whatever their HTTP status.
RETRY_CODES = frozenset(
    {
        "ATLAS-500-00-005",  # FAILED_TO_OBTAIN_TYPE_UPDATE_LOCK
        "ATLAS-500-00-006",  # FAILED_TO_OBTAIN_IMPORT_EXPORT_LOCK (sent as 409)
    }
)
TYPE_NAME_INVALID = "ATLAS-400-00-014"
TYPE_ALREADY_EXISTS = "ATLAS-409-00-001"
INSTANCE_NOT_FOUND = ("ATLAS-404-00-009", "ATLAS-404-00-005")
# AtlasEntityStoreV2.validateEntityAssociations, as INVALID_PARAMETERS (ATLAS-400-00-01A).
ALREADY_ASSOCIATED = "already associated with classification"

# Query strings longer than this are split over several GETs (Jetty's header buffer is 8 KiB).
MAX_QUERY_CHARS = 4000


class Verdict(Enum):
    OK = "ok"
    RETRY = "retry"
    REJECT = "reject"
    AUTH = "auth"


@dataclass(frozen=True)
class AtlasError:
    code: str
    message: str
    cause: str | None = None

    def __str__(self) -> str:
        return f"{self.code} {self.message}" + (f" (cause: {self.cause})" if self.cause else "")


def parse_error(status: int | None, body: str | bytes | None) -> AtlasError:
    """Atlas's error body ({errorCode, errorMessage, errorCause}), or what came instead."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    try:
        document = json.loads(text) if text else None
    except ValueError:
        document = None
    if isinstance(document, dict) and document.get("errorCode"):
        cause = document.get("errorCause")
        return AtlasError(
            str(document["errorCode"]),
            str(document.get("errorMessage") or ""),
            str(cause) if cause else None,
        )
    excerpt = " ".join(text.split())[:300] or "(empty body)"
    return AtlasError(f"HTTP-{status}" if status is not None else "NO-RESPONSE", excerpt)


def is_atlas_error(body: str | bytes | None) -> bool:
    return not parse_error(0, body).code.startswith(("HTTP-", "NO-RESPONSE"))


def classify(status: int | None, body: str | bytes | None = None) -> Verdict:
    """What to do with Atlas's answer; ``status`` None: no answer (connection error, timeout)."""
    if status is None:
        return Verdict.RETRY
    if 200 <= status < 300:
        return Verdict.OK
    if status in (401, 403):
        return Verdict.AUTH
    error = parse_error(status, body)
    text = f"{error.message} {error.cause or ''}"
    if error.code in RETRY_CODES or any(marker in text for marker in LOCK_MARKERS):
        return Verdict.RETRY
    if status in (408, 429) or status >= 500:
        return Verdict.RETRY
    if 300 <= status < 400:
        return Verdict.RETRY
    if status == 404 and not is_atlas_error(body):
        return Verdict.RETRY
    return Verdict.REJECT


def credentials_from_env(env: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """(user, password) from ATLAS_USERNAME (or ATLAS_USER) and ATLAS_PASSWORD or
    ATLAS_PASSWORD_FILE; None when none is set."""
    env = os.environ if env is None else env
    user = env.get("ATLAS_USERNAME") or env.get("ATLAS_USER")
    password = env.get("ATLAS_PASSWORD")
    password_file = env.get("ATLAS_PASSWORD_FILE")
    if password and password_file:
        raise ValueError(
            "both ATLAS_PASSWORD and ATLAS_PASSWORD_FILE are set: expected one of them; unset one"
        )
    if password_file:
        try:
            password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ValueError(
                f"ATLAS_PASSWORD_FILE {password_file} cannot be read ({exc.strerror}): expected "
                "a readable file holding the Atlas password"
            ) from None
    if not user and not password:
        return None
    if not user or not password:
        missing = "ATLAS_USERNAME" if not user else "ATLAS_PASSWORD (or ATLAS_PASSWORD_FILE)"
        raise ValueError(f"Atlas credentials are incomplete: {missing} is not set; set both")
    return user, password


class _Auth(HTTPBasicAuth):
    """Basic auth whose repr never shows the password."""

    def __repr__(self) -> str:
        return f"<basic auth for {self.username!r}>"


class _LruSet:
    """Refs whose direct classifications were confirmed, with the names confirmed."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[Ref, frozenset[str]] = OrderedDict()

    def covers(self, ref: Ref, names: Iterable[str]) -> bool:
        known = self._data.get(ref)
        if known is None:
            return False
        self._data.move_to_end(ref)
        return known.issuperset(names)

    def add(self, ref: Ref, names: Iterable[str]) -> None:
        self._data[ref] = self._data.get(ref, frozenset()) | frozenset(names)
        self._data.move_to_end(ref)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)


@dataclass
class _Answer:
    verdict: Verdict
    status: int
    text: str

    def json(self) -> Any:
        try:
            return json.loads(self.text) if self.text else None
        except ValueError:
            return None

    @property
    def error(self) -> AtlasError:
        return parse_error(self.status, self.text)


class AtlasRequestError(Exception):
    """A read refused by Atlas for what it asked (a 4xx other than 401/403)."""

    def __init__(self, what: str, status: int, error: AtlasError) -> None:
        super().__init__(f"{what}: Atlas answered HTTP {status}, {error}")
        self.status = status
        self.error = error


class AtlasRestTarget:
    """``Target`` writing to Atlas through ``POST /api/atlas/v2/entity/bulk``."""

    name = "atlas-rest"

    def __init__(
        self,
        base_url: str,
        auth: tuple[str, str] | None = None,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        batch_size: int = 200,
        max_batch_bytes: int = 2_000_000,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        verify: bool | str = True,
        typedefs: Mapping[str, Any] | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        classification_cache: int = 100_000,
    ) -> None:
        """``auth``: (user, password); None reads ATLAS_USERNAME / ATLAS_PASSWORD
        (or ATLAS_PASSWORD_FILE). ``typedefs``: the project's AtlasTypesDef (default: the
        packaged servemeta_typedefs.json)."""
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"Atlas URL {base_url!r}: expected http(s)://host:port, e.g. http://atlas:21000"
            )
        if parts.username or parts.password:
            raise ValueError(
                "the Atlas URL carries credentials: expected them in ATLAS_USERNAME and "
                "ATLAS_PASSWORD (or ATLAS_PASSWORD_FILE) instead; remove them from the URL"
            )
        if batch_size < 1 or max_batch_bytes < 1 or max_retries < 0:
            raise ValueError(
                f"batch_size={batch_size}, max_batch_bytes={max_batch_bytes}, "
                f"max_retries={max_retries}: expected positive sizes and retries >= 0"
            )
        self.base_url = base_url.rstrip("/")
        credentials = auth if auth is not None else credentials_from_env()
        self.user = credentials[0] if credentials else None
        self.timeout = (connect_timeout, read_timeout)
        self.batch_size = batch_size
        self.max_batch_bytes = max_batch_bytes
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.typedefs = dict(typedefs) if typedefs is not None else load_project_typedefs()
        self.model = entity_json.type_model(builtin_typedefs(), self.typedefs)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._classified = _LruSet(classification_cache)
        # Classification types Atlas confirmed it has (see ``classification_problems``).
        self._classification_types: set[str] = set()
        # Set while one write() re-registered the project's types (at most once per write).
        self._types_restored = False
        self._session = session or requests.Session()
        self._session.headers.update(
            {
                "Accept": "application/json",
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
            }
        )
        self._session.verify = verify
        if credentials:
            self._session.auth = _Auth(*credentials)
        else:
            log.warning("no Atlas credentials set (ATLAS_USERNAME, ATLAS_PASSWORD): sending none")

    def __repr__(self) -> str:
        return f"AtlasRestTarget({self.base_url!r}, user={self.user!r})"

    # -- Target --------------------------------------------------------------------------------

    def ensure_types(self) -> None:
        """Check that Atlas has the types of its own that the sink writes, then create the
        project's missing types and add new attributes to existing ones. Nothing is written
        when a built-in type or attribute is missing."""
        self.check_builtin_types()
        names = type_names(self.typedefs)
        for attempt in range(2):
            existing = merge(self._typedef(name) for name in names)
            plan = plan_typedefs(self.typedefs, existing)
            if plan.problems:
                raise TypedefConflict(
                    f"the types in Atlas at {self.base_url} differ from the project's in ways "
                    "Atlas does not update over REST:\n- "
                    + "\n- ".join(plan.problems)
                    + "\nexpected only new optional attributes; change the type definitions or "
                    "Atlas's types (typedef patch), then start again"
                )
            if not plan.needs_request:
                log.info("Atlas types up to date", extra={"types": len(plan.unchanged)})
                return
            log.info("registering Atlas types: %s", plan.summary())
            if any(plan.create.values()):
                answer = self._request(
                    "POST", "/types/typedefs", body=plan.create, what="creating types"
                )
                if answer.verdict is Verdict.REJECT:
                    if answer.error.code == TYPE_ALREADY_EXISTS and attempt == 0:
                        # Another sink created them meanwhile: look again.
                        continue
                    raise TypedefConflict(
                        f"Atlas refused to create types {type_names(plan.create)}: "
                        f"{answer.error}; check deploy/atlas/servemeta_typedefs.json"
                    )
            if any(plan.update.values()):
                answer = self._request(
                    "PUT", "/types/typedefs", body=plan.update, what="updating types"
                )
                if answer.verdict is Verdict.REJECT:
                    raise TypedefConflict(
                        f"Atlas refused to update types {type_names(plan.update)}: "
                        f"{answer.error}; check deploy/atlas/servemeta_typedefs.json"
                    )
            return

    def check_builtin_types(self) -> None:
        """Raise ``MissingBuiltinTypes`` naming every type, attribute and relationship of
        Atlas's own model that the sink writes and this Atlas lacks."""
        documents = []
        pending = sorted(ATLAS_TYPES_WRITTEN)
        seen: set[str] = set()
        while pending:
            name = pending.pop()
            if name in seen:
                continue
            seen.add(name)
            document = self._typedef(name)
            documents.append(document)
            for definition in document.get("entityDefs") or []:
                pending.extend(definition.get("superTypes") or [])
        documents += [self._typedef(name) for name in ATLAS_RELATIONSHIPS_WRITTEN]
        problems = missing_builtins(
            ATLAS_TYPES_WRITTEN, ATLAS_RELATIONSHIPS_WRITTEN, merge(documents)
        )
        if problems:
            raise MissingBuiltinTypes(
                f"Atlas at {self.base_url} lacks types of Atlas's own model that the sink "
                "writes:\n- " + "\n- ".join(problems) + "\nexpected Atlas's base, file "
                "system, Kafka and AWS S3 v2 models (Atlas 2.1 to 2.4 ship them in "
                "models/); load them into Atlas (deploy/atlas/builtin/ has the project's "
                "definitions of them), then start again. Nothing was written."
            )

    def fetch(
        self, refs: Sequence[Ref], attribute_names: Sequence[str]
    ) -> dict[Ref, dict[str, Any]]:
        names = tuple(attribute_names)
        found = self._entities(refs)
        return {
            ref: {n: entity["attributes"][n] for n in names if n in entity["attributes"]}
            for ref, entity in found.items()
        }

    def write(self, entities: Sequence[Entity]) -> WriteResult:
        result = WriteResult()
        if not entities:
            return result
        result.rejected.update(self.refuse_unknown_classifications(entities))
        writable = [e for e in entities if e.ref not in result.rejected]
        created: set[Ref] = set()
        try:
            for batch in self._batches(entity_json.topological_order(writable)):
                self._write_batch(batch, result, created)
        except TargetUnavailable:
            # A classification type deleted since it was confirmed makes Atlas 2.1 answer a bare
            # 500 (a NullPointerException in EntityGraphMapper.createClassificationVertex),
            # which is retried like any 5xx: confirm the types again before the next attempt,
            # so that such an entity is refused then instead of blocking its partition.
            self._classification_types.clear()
            raise
        self._add_classifications(writable, created, result)
        return result

    def classification_problems(self, names: Iterable[str]) -> dict[str, AtlasError]:
        """Atlas's error for each classification name it has no type for (asked once per name
        until Atlas confirms it; confirmed names are remembered).

        Checked before writing because Atlas 2.1 does not refuse an entity carrying an
        undefined classification with a 4xx: ``POST /entity/bulk`` (and the hook consumer) fail
        with a NullPointerException, a bare HTTP 500 that a sink must retry, so one such event
        would block its partition forever. ``GET /types/classificationdef/name/<name>`` answers
        404 ATLAS-404-00-001 for it."""
        problems: dict[str, AtlasError] = {}
        for name in sorted(set(names) - self._classification_types):
            what = f"reading classification type {name!r}"
            answer = self._request(
                "GET", f"/types/classificationdef/name/{_segment(name)}", what=what
            )
            if answer.verdict is not Verdict.OK and self._restore_types(
                name, f"{answer.error}, reading classification type {name!r}"
            ):
                answer = self._request(
                    "GET", f"/types/classificationdef/name/{_segment(name)}", what=what
                )
            if answer.verdict is Verdict.OK:
                self._classification_types.add(name)
            else:
                problems[name] = answer.error
        return problems

    def refuse_unknown_classifications(self, entities: Sequence[Entity]) -> dict[Ref, Rejection]:
        """Rejections for the entities that carry a classification Atlas has no type for, and
        for the entities of ``entities`` that refer to those (Atlas would refuse them: 404
        ATLAS-404-00-00A over REST; the hook path would make shells of the refused ones)."""
        self._types_restored = False  # a new write: the types may be restored once in it
        problems = self.classification_problems({n for e in entities for n in e.classifications})
        if not problems:
            return {}
        rejected: dict[Ref, Rejection] = {}
        for entity in entities:
            for name in entity.classifications:
                error = problems.get(name)
                if error is not None:
                    rejected[entity.ref] = Rejection(
                        error.code,
                        f"classification {name!r} is not defined in Atlas: {_message(error)}",
                    )
                    break
        changed = True
        while changed:  # referrers of refused entities, transitively
            changed = False
            for entity in entities:
                if entity.ref in rejected:
                    continue
                refused = next((t for t in _refs(entity) if t in rejected), None)
                if refused is not None:
                    cause = rejected[refused]
                    rejected[entity.ref] = Rejection(
                        cause.code,
                        f"refers to {refused.type_name} {refused.qualified_name!r}, which was "
                        f"refused: {cause.message}",
                    )
                    changed = True
        for ref, rejection in rejected.items():
            log.warning(
                "refusing %s %r: %s",
                ref.type_name,
                ref.qualified_name,
                rejection.message,
                extra={"code": rejection.code},
            )
        return rejected

    def close(self) -> None:
        self._session.close()

    # -- reads for the CLI ---------------------------------------------------------------------

    def entity(
        self, type_name: str, qualified_name: str, *, ignore_relationships: bool = False
    ) -> dict[str, Any] | None:
        """AtlasEntityWithExtInfo of one entity, or None when Atlas has no such entity."""
        answer = self._request(
            "GET",
            f"/entity/uniqueAttribute/type/{_segment(type_name)}",
            params=[
                ("attr:qualifiedName", qualified_name),
                ("ignoreRelationships", _flag(ignore_relationships)),
            ],
            what=f"reading {type_name} {qualified_name!r}",
        )
        return self._read_answer(answer, f"reading {type_name} {qualified_name!r}")

    def entity_by_guid(self, guid: str) -> dict[str, Any] | None:
        """AtlasEntityWithExtInfo by guid (relationship ends name their entities by guid)."""
        what = f"reading the entity with guid {guid!r}"
        answer = self._request("GET", f"/entity/guid/{_segment(guid)}", what=what)
        return self._read_answer(answer, what)

    def lineage(
        self, type_name: str, qualified_name: str, direction: str = "BOTH", depth: int = 3
    ) -> dict[str, Any] | None:
        """AtlasLineageInfo around one entity (direction INPUT, OUTPUT or BOTH)."""
        if direction not in ("INPUT", "OUTPUT", "BOTH"):
            raise ValueError(f"lineage direction {direction!r}: expected INPUT, OUTPUT or BOTH")
        what = f"reading the lineage of {type_name} {qualified_name!r}"
        answer = self._request(
            "GET",
            f"/lineage/uniqueAttribute/type/{_segment(type_name)}",
            params=[
                ("attr:qualifiedName", qualified_name),
                ("direction", direction),
                ("depth", str(depth)),
            ],
            what=what,
        )
        return self._read_answer(answer, what)

    def search(
        self,
        type_name: str | None = None,
        classification: str | None = None,
        *,
        query: str | None = None,
        limit: int = 100,
        offset: int = 0,
        attributes: Sequence[str] = (),
        exclude_deleted: bool = True,
    ) -> dict[str, Any]:
        """Basic search (AtlasSearchResult): entities of a type and/or with a classification."""
        if not type_name and not classification and not query:
            raise ValueError("search: expected a type name, a classification or a query")
        body: dict[str, Any] = {
            "excludeDeletedEntities": exclude_deleted,
            "limit": limit,
            "offset": offset,
        }
        if type_name:
            body["typeName"] = type_name
        if classification:
            body["classification"] = classification
        if query:
            body["query"] = query
        if attributes:
            body["attributes"] = list(attributes)
        what = f"searching {type_name or ''} {classification or ''} {query or ''}".strip()
        answer = self._request("POST", "/search/basic", body=body, what=what)
        found = self._read_answer(answer, what)
        return found or {}

    # -- writing -------------------------------------------------------------------------------

    def _batches(self, entities: Sequence[Entity]) -> Iterator[list[Entity]]:
        """Consecutive runs bounded by count and bytes: Atlas times out on very large bulks."""
        batch: list[Entity] = []
        size = 0
        for entity in entities:
            entity_bytes = entity_json.entity_size(entity, self.model)
            if batch and (
                len(batch) >= self.batch_size or size + entity_bytes > self.max_batch_bytes
            ):
                yield batch
                batch, size = [], 0
            batch.append(entity)
            size += entity_bytes
        if batch:
            yield batch

    def _write_batch(self, batch: list[Entity], result: WriteResult, created: set[Ref]) -> None:
        answer = self._request(
            "POST",
            "/entity/bulk",
            body=entity_json.bulk_request(batch, self.model),
            what=f"writing {len(batch)} entities",
        )
        result.requests += 1
        if answer.verdict is Verdict.OK:
            response = answer.json()
            if not isinstance(response, dict):
                # A 200 that is no EntityMutationResponse (a login page behind a proxy, say)
                # wrote nothing: not a success to acknowledge.
                raise TargetUnavailable(
                    f"writing {len(batch)} entities to {self.base_url}: expected Atlas's JSON "
                    f"answer (EntityMutationResponse), got {answer.text[:120]!r}; check that "
                    "ATLAS_URL is Atlas's address and nothing in between rewrites answers"
                )
            result.written += len(batch)
            created.update(_created(batch, response))
            return
        if answer.error.code == TYPE_NAME_INVALID and self._restore_types(
            answer.error.message, f"{answer.error}, writing {len(batch)} entities"
        ):
            self._write_batch(batch, result, created)
            return
        if len(batch) == 1:
            entity = batch[0]
            error = answer.error
            log.warning(
                "Atlas refused %s %r: %s",
                entity.type_name,
                entity.qualified_name,
                error,
                extra={"status": answer.status, "code": error.code},
            )
            result.rejected[entity.ref] = Rejection(error.code, _message(error))
            return
        # Some entity in the batch is refused: halve until it stands alone. The halves keep
        # the batch's order, so referenced entities are written before those referring.
        middle = len(batch) // 2
        self._write_batch(batch[:middle], result, created)
        self._write_batch(batch[middle:], result, created)

    def _restore_types(self, text: str, what: str) -> bool:
        """When ``text`` (an Atlas error) names one of the project's own types, register the
        types again and say so; at most once per write. An Atlas that lost them (a new or
        reset server, a type deleted by hand) then gets them back instead of every entity
        being refused with 400 ATLAS-400-00-014 (unknown type) and dead-lettered."""
        if self._types_restored:
            return False
        missing = sorted(
            name for name in type_names(self.typedefs) if re.search(rf"\b{re.escape(name)}\b", text)
        )
        if not missing:
            return False
        self._types_restored = True
        log.warning(
            "Atlas at %s lacks the project's type(s) %s (%s): registering the types again",
            self.base_url,
            missing,
            what,
        )
        self.ensure_types()
        return True

    def _add_classifications(
        self, entities: Sequence[Entity], created: set[Ref], result: WriteResult
    ) -> None:
        """Attach the classifications an existing entity lacks (bulk upserts apply them only
        when they create the entity): only the missing ones, since Atlas refuses a request
        naming one already attached."""
        wanted: dict[Ref, frozenset[str]] = {}
        for entity in entities:
            names = frozenset(entity.classifications)
            if not names or entity.ref in result.rejected:
                continue
            if entity.ref in created:
                self._classified.add(entity.ref, names)
            elif not self._classified.covers(entity.ref, names):
                wanted[entity.ref] = names
        if not wanted:
            return
        found = self._entities(list(wanted))
        for ref, names in wanted.items():
            stored = found.get(ref)
            if stored is None:
                continue
            guid = str(stored.get("guid"))
            direct = {
                c.get("typeName")
                for c in stored.get("classifications") or []
                if c.get("entityGuid") in (None, "", guid)
            }
            missing = sorted(names - direct)
            if missing:
                what = f"classifying {ref.type_name} {ref.qualified_name!r} as {missing}"
                answer = self._request(
                    "POST",
                    f"/entity/guid/{_segment(guid)}/classifications",
                    body=entity_json.classifications_json(missing),
                    what=what,
                )
                result.requests += 1
                if answer.verdict is Verdict.REJECT and ALREADY_ASSOCIATED not in str(answer.error):
                    log.warning("Atlas refused %s: %s", what, answer.error)
                    result.rejected[ref] = Rejection(
                        answer.error.code,
                        f"entity written, but classifications {missing} refused: "
                        f"{_message(answer.error)}",
                    )
                    result.written -= 1
                    continue
            self._classified.add(ref, names)

    # -- reading -------------------------------------------------------------------------------

    def _entities(self, refs: Sequence[Ref]) -> dict[Ref, dict[str, Any]]:
        """Stored entities (without relationships) by ref; absent ones are left out."""
        by_type: dict[str, list[str]] = {}
        for ref in refs:
            names = by_type.setdefault(ref.type_name, [])
            if ref.qualified_name not in names:
                names.append(ref.qualified_name)
        found: dict[Ref, dict[str, Any]] = {}
        for type_name, qualified_names in by_type.items():
            for chunk in _query_chunks(qualified_names):
                what = f"reading {len(chunk)} {type_name} entities"
                params = [("minExtInfo", "true"), ("ignoreRelationships", "true")]
                params += [(f"attr_{i}:qualifiedName", qn) for i, qn in enumerate(chunk)]
                answer = self._request(
                    "GET",
                    f"/entity/bulk/uniqueAttribute/type/{_segment(type_name)}",
                    params=params,
                    what=what,
                )
                if answer.verdict is Verdict.REJECT:
                    if answer.error.code == TYPE_NAME_INVALID:
                        # Atlas has no such type yet, so none of these entities exists.
                        log.info("Atlas has no type %s yet", type_name)
                        break
                    raise TargetUnavailable(
                        f"{what} from Atlas at {self.base_url}: HTTP {answer.status}, "
                        f"{answer.error}; expected the entities or an empty list"
                    )
                wanted = set(chunk)
                document = answer.json()
                if not isinstance(document, dict):
                    raise TargetUnavailable(
                        f"{what} from {self.base_url}: expected JSON (AtlasEntitiesWithExtInfo), "
                        f"got {answer.text[:120]!r}; is ATLAS_URL Atlas's address?"
                    )
                for entity in document.get("entities") or []:
                    attributes = entity.get("attributes") or {}
                    qualified_name = attributes.get(entity_json.QUALIFIED_NAME)
                    if entity.get("status") == "DELETED" or qualified_name not in wanted:
                        continue
                    entity["attributes"] = attributes
                    found[Ref(type_name, qualified_name)] = entity
        return found

    def _typedef(self, name: str) -> dict[str, Any]:
        what = f"reading type {name}"
        answer = self._request("GET", "/types/typedefs", params=[("name", name)], what=what)
        if answer.verdict is Verdict.REJECT:
            raise TargetUnavailable(
                f"{what} from Atlas at {self.base_url}: HTTP {answer.status}, {answer.error}; "
                "expected an AtlasTypesDef"
            )
        document = answer.json()
        if not isinstance(document, dict):
            raise TargetUnavailable(
                f"{what} from {self.base_url}: expected JSON (AtlasTypesDef), got "
                f"{answer.text[:120]!r}; is ATLAS_URL Atlas's address?"
            )
        return document

    def _read_answer(self, answer: _Answer, what: str) -> dict[str, Any] | None:
        if answer.verdict is Verdict.REJECT:
            if answer.status == 404 and answer.error.code in INSTANCE_NOT_FOUND:
                return None
            raise AtlasRequestError(what, answer.status, answer.error)
        document = answer.json()
        return document if isinstance(document, dict) else None

    # -- HTTP ----------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Sequence[tuple[str, str]] | None = None,
        body: Any = None,
    ) -> _Answer:
        """One call with retries. Returns OK and REJECT answers; raises on AUTH and when the
        retries are used up."""
        url = f"{self.base_url}{API}{path}"
        data = entity_json.dumps(body) if body is not None else None
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                response = self._session.request(
                    method,
                    url,
                    params=params,
                    data=data,
                    timeout=self.timeout,
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                # The text names host, port and path; the credentials are in a header, not in it.
                status: int | None = None
                text = ""
                detail = f"no answer ({type(exc).__name__}: {str(exc)[:300]})"
            else:
                status, text = response.status_code, response.text
                detail = f"HTTP {status}, {parse_error(status, text)}"
                if 300 <= status < 400:
                    detail += f" (redirected to {response.headers.get('Location')})"
                retry_after = _retry_after(response.headers.get("Retry-After"))
            verdict = classify(status, text)
            if verdict is Verdict.OK or verdict is Verdict.REJECT:
                assert status is not None
                return _Answer(verdict, status, text)
            if verdict is Verdict.AUTH:
                raise TargetAuthError(self._auth_message(status, text, what))
            if attempt >= self.max_retries:
                raise TargetUnavailable(
                    f"{what} at {self.base_url}: {detail}, still after {attempt + 1} attempts; "
                    "expected Atlas to answer. Check that Atlas is up and ATLAS_URL points at it"
                )
            delay = self._backoff(attempt, retry_after)
            log.warning(
                "%s: %s; retrying in %.1f s", what, detail, delay, extra={"attempt": attempt + 1}
            )
            self._sleep(delay)
            attempt += 1

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        # Exponential with "equal jitter": half the step fixed, half random, so that sinks
        # started together do not retry together, yet none retries at once.
        step = min(self.backoff_max, self.backoff_base * (2.0**attempt))
        delay = step / 2 + self._rng.uniform(0, step / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max))
        return delay

    def _auth_message(self, status: int | None, text: str, what: str) -> str:
        error = parse_error(status, text)
        who = f"user {self.user!r}" if self.user else "no credentials"
        if status == 401:
            return (
                f"{what}: Atlas at {self.base_url} refused {who} (HTTP 401, {error}); expected "
                "valid credentials: set ATLAS_USERNAME and ATLAS_PASSWORD (or "
                "ATLAS_PASSWORD_FILE)"
            )
        return (
            f"{what}: Atlas at {self.base_url} denied {who} (HTTP 403, {error}); expected a user "
            "allowed to read types and create and update entities: grant those rights in "
            "Atlas's authorizer (or Ranger), or use another user"
        )


# -- helpers -----------------------------------------------------------------------------------


def _created(batch: Sequence[Entity], response: Any) -> set[Ref]:
    """Refs of the batch that Atlas created (not updated), from EntityMutationResponse."""
    if not isinstance(response, dict):
        return set()
    assignments = response.get("guidAssignments") or {}
    mutated = response.get("mutatedEntities") or {}
    created_guids = {h.get("guid") for h in mutated.get("CREATE") or []}
    placeholders = entity_json.placeholder_guids(batch)
    return {
        ref
        for ref, placeholder in placeholders.items()
        if assignments.get(placeholder) in created_guids
    }


def _refs(entity: Entity) -> list[Ref]:
    refs: list[Ref] = []
    for target in entity.references.values():
        refs.extend([target] if isinstance(target, Ref) else target)
    return refs


def _query_chunks(qualified_names: Sequence[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    length = 0
    for qualified_name in qualified_names:
        cost = len(quote(qualified_name, safe="")) + 32
        if chunk and length + cost > MAX_QUERY_CHARS:
            yield chunk
            chunk, length = [], 0
        chunk.append(qualified_name)
        length += cost
    if chunk:
        yield chunk


def _segment(value: str) -> str:
    return quote(value, safe="")


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _message(error: AtlasError) -> str:
    return error.message + (f" (cause: {error.cause})" if error.cause else "")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from Atlas, the backoff applies
