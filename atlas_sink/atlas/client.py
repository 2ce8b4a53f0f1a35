"""One HTTP client for Apache Atlas's REST API v2 (2.1 to 2.4): requests with retries, Atlas's
errors, and the reads every part of the sink needs (entities, types, lineage, paged search).

How Atlas answers decides what a caller does (``classify``, pure):

- 2xx: done.
- 401/403: the credentials are wrong or lack a right; no request can succeed, so
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
  refused (``Verdict.REJECT``); the caller decides what that means.
- 404 or 3xx without an Atlas error: no Atlas answered (a proxy, a wrong path, a login
  redirect): retried, then ``TargetUnavailable`` naming what answered; never blamed on data.

Credentials come from the caller (the validated configuration); the client never reads the
environment. The password is held by the session's auth object only: never logged, never in a
message and never in ``repr``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import quote, urlsplit

import requests
from requests.auth import HTTPBasicAuth

from atlas_sink.atlas import entity_json
from atlas_sink.core.entities import Ref
from atlas_sink.core.target import TargetAuthError, TargetUnavailable
from atlas_sink.runtime.retry import backoff_seconds

log = logging.getLogger("servemeta.sink.atlas")

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


class _Auth(HTTPBasicAuth):
    """Basic auth whose repr never shows the password."""

    def __repr__(self) -> str:
        return f"<basic auth for {self.username!r}>"


@dataclass
class Answer:
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


class AtlasClient:
    """Atlas at ``base_url``, asked with (user, password) when ``auth`` is given."""

    def __init__(
        self,
        base_url: str,
        auth: tuple[str, str] | None = None,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        verify: bool | str = True,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        """``auth``: (user, password), or None to send no credentials."""
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
        if max_retries < 0:
            raise ValueError(f"max_retries={max_retries}: expected retries >= 0")
        self.base_url = base_url.rstrip("/")
        credentials = auth
        self.user = credentials[0] if credentials else None
        self.timeout = (connect_timeout, read_timeout)
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._sleep = sleep
        self._rng = rng or random.Random()
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
        return f"AtlasClient({self.base_url!r}, user={self.user!r})"

    def close(self) -> None:
        self._session.close()

    # -- reads ---------------------------------------------------------------------------------

    def entity(
        self, type_name: str, qualified_name: str, *, ignore_relationships: bool = False
    ) -> dict[str, Any] | None:
        """AtlasEntityWithExtInfo of one entity, or None when Atlas has no such entity."""
        answer = self.request(
            "GET",
            f"/entity/uniqueAttribute/type/{segment(type_name)}",
            params=[
                ("attr:qualifiedName", qualified_name),
                ("ignoreRelationships", flag(ignore_relationships)),
            ],
            what=f"reading {type_name} {qualified_name!r}",
        )
        return self.read_answer(answer, f"reading {type_name} {qualified_name!r}")

    def entity_by_guid(self, guid: str) -> dict[str, Any] | None:
        """AtlasEntityWithExtInfo by guid (relationship ends name their entities by guid)."""
        what = f"reading the entity with guid {guid!r}"
        answer = self.request("GET", f"/entity/guid/{segment(guid)}", what=what)
        return self.read_answer(answer, what)

    def lineage(
        self, type_name: str, qualified_name: str, direction: str = "BOTH", depth: int = 3
    ) -> dict[str, Any] | None:
        """AtlasLineageInfo around one entity (direction INPUT, OUTPUT or BOTH)."""
        if direction not in ("INPUT", "OUTPUT", "BOTH"):
            raise ValueError(f"lineage direction {direction!r}: expected INPUT, OUTPUT or BOTH")
        what = f"reading the lineage of {type_name} {qualified_name!r}"
        answer = self.request(
            "GET",
            f"/lineage/uniqueAttribute/type/{segment(type_name)}",
            params=[
                ("attr:qualifiedName", qualified_name),
                ("direction", direction),
                ("depth", str(depth)),
            ],
            what=what,
        )
        return self.read_answer(answer, what)

    def search(
        self,
        type_name: str | None = None,
        classification: str | None = None,
        *,
        query: str | None = None,
        limit: int = 100,
        offset: int = 0,
        attributes: Sequence[str] = (),
        attribute_filter: tuple[str, str, str] | None = None,
        exclude_deleted: bool = True,
    ) -> dict[str, Any]:
        """Basic search (AtlasSearchResult): entities of a type and/or with a classification;
        ``attribute_filter`` is (attribute, operator, value), such as ("name", "eq", "wine")."""
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
        if attribute_filter is not None:
            name, operator, value = attribute_filter
            body["entityFilters"] = {
                "attributeName": name,
                "operator": operator,
                "attributeValue": value,
            }
        what = f"searching {type_name or ''} {classification or ''} {query or ''}".strip()
        answer = self.request("POST", "/search/basic", body=body, what=what)
        found = self.read_answer(answer, what)
        return found or {}

    def search_all(
        self,
        type_name: str | None = None,
        classification: str | None = None,
        *,
        query: str | None = None,
        attributes: Sequence[str] = (),
        attribute_filter: tuple[str, str, str] | None = None,
        page_size: int = 500,
    ) -> Iterator[dict[str, Any]]:
        """Every entity header a basic search finds, page after page: one page holds at most
        ``page_size`` (Atlas's default is 100), and a search that stops at the first page
        misses the rest."""
        offset = 0
        while True:
            page = self.search(
                type_name,
                classification,
                query=query,
                limit=page_size,
                offset=offset,
                attributes=attributes,
                attribute_filter=attribute_filter,
            )
            entities = page.get("entities") or []
            yield from entities
            if len(entities) < page_size:
                return
            offset += len(entities)

    def attributes_of(
        self, refs: Sequence[Ref], attribute_names: Sequence[str]
    ) -> dict[Ref, dict[str, Any]]:
        """The named attributes of the entities that exist (absent ones are left out)."""
        names = tuple(attribute_names)
        return {
            ref: {n: entity["attributes"][n] for n in names if n in entity["attributes"]}
            for ref, entity in self.entities(refs).items()
        }

    def entities(self, refs: Sequence[Ref]) -> dict[Ref, dict[str, Any]]:
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
                answer = self.request(
                    "GET",
                    f"/entity/bulk/uniqueAttribute/type/{segment(type_name)}",
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

    def typedef(self, name: str) -> dict[str, Any]:
        """Atlas's AtlasTypesDef for one type name (empty sections when it has none)."""
        what = f"reading type {name}"
        answer = self.request("GET", "/types/typedefs", params=[("name", name)], what=what)
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

    def read_answer(self, answer: Answer, what: str) -> dict[str, Any] | None:
        """A read's JSON object; None when Atlas has no such instance."""
        if answer.verdict is Verdict.REJECT:
            if answer.status == 404 and answer.error.code in INSTANCE_NOT_FOUND:
                return None
            raise AtlasRequestError(what, answer.status, answer.error)
        document = answer.json()
        return document if isinstance(document, dict) else None

    # -- HTTP ----------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Sequence[tuple[str, str]] | None = None,
        body: Any = None,
    ) -> Answer:
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
                return Answer(verdict, status, text)
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
        delay = backoff_seconds(attempt, self.backoff_max, first=self.backoff_base, rng=self._rng)
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


def segment(value: str) -> str:
    return quote(value, safe="")


def flag(value: bool) -> str:
    return "true" if value else "false"


def message(error: AtlasError) -> str:
    return error.message + (f" (cause: {error.cause})" if error.cause else "")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from Atlas, the backoff applies
