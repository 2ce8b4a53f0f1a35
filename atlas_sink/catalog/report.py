"""The governance report: what a catalog knows about one served model, question by question.

It reads through ``CatalogReader`` (the embedded catalog implements it; so does the Atlas
reader), and builds plain data: the CLI prints it as text for people or JSON for programs.
Each section answers one of the questions the project exists for (see README):
sources, parameters, artifact storage and its security, model type, quality trained and
live, input/output schemas and their history, taxonomy and classifications, schemas of the
sources, and the processes that use the model with the data flowing through them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from atlas_sink.catalog.model import LineageGraph, StoredEntity, entity_key
from atlas_sink.catalog.reader import (
    CatalogReader,
    find_model,
    find_version,
    model_lineage,
    model_versions,
)
from atlas_sink.core import naming
from atlas_sink.core.entities import Ref
from atlas_sink.core.serving_stats import from_words
from atlas_sink.core.translate import (
    DEPLOYMENT,
    ENCRYPTED,
    MODEL_VERSION,
    SCHEMA_CHANGE,
    SERVING_STATS,
)

# A replica is stale when it was last heard this many of its windows before the newest
# window of its deployment (SINK_STALE_WINDOWS).
DEFAULT_STALE_WINDOWS = 3.0


@dataclass(frozen=True)
class Report:
    data: dict[str, Any]
    lineage: LineageGraph


def _refs(value: Ref | list[Ref] | None) -> list[Ref]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _millis(value: Any) -> str | None:
    # Atlas keeps a date never written as 0 (and its UI shows it empty): unknown, like None.
    if not value:
        return None
    return datetime.fromtimestamp(int(value) / 1000, UTC).isoformat(timespec="seconds")


def _schema(reader: CatalogReader, ref: Ref | None) -> dict[str, Any] | None:
    if ref is None:
        return None
    schema = reader.entity(ref.type_name, ref.qualified_name)
    if schema is None:
        return {"qualifiedName": ref.qualified_name, "missing": True}
    return {
        "fingerprint": schema.attributes.get("fingerprint"),
        "fields": schema.attributes.get("fields") or [],
        "classifications": list(schema.all_classifications),
    }


def encrypted_at_rest(attributes: dict[str, Any]) -> bool | None:
    """True, False, or None when the server did not say."""
    encryption = attributes.get("artifactEncryption")
    return None if encryption is None else encryption == ENCRYPTED


def storage_assessment(attributes: dict[str, Any]) -> dict[str, Any]:
    """How safely the artifact is stored, from the facts the server reported."""
    problems = []
    scheme = str(attributes.get("artifactScheme") or "").lower()
    encrypted = encrypted_at_rest(attributes)
    access = str(attributes.get("accessMode") or "")
    if encrypted is False:
        problems.append("not encrypted at rest")
    if scheme == "http":
        problems.append("fetched over plain HTTP")
    if "world" in access.lower() or "public" in access.lower():
        problems.append(f"readable by anyone ({access})")
    if problems:
        verdict = "at risk"
    elif encrypted is True and access:
        verdict = "secure"
    else:
        verdict = "unknown"
        problems.append("encryption or access control not reported")
    return {"verdict": verdict, "findings": problems}


def _live(found: list[StoredEntity]) -> dict[str, Any]:
    """The deployment's newest window, whichever version it was of, and its totals: the sums
    over the versions it served. Unknown stays None: no window is not a window of 0."""
    windows = [e.attributes["latestWindow"] for e in found if e.attributes.get("latestWindow")]
    window: dict[str, Any] = max(windows, key=lambda w: int(w.get("end") or 0), default={})
    lifetimes = [e.attributes["lifetime"] for e in found if e.attributes.get("lifetime")]
    requests = window.get("requests")
    return {
        "windowStart": _millis(window.get("start")),
        "windowEnd": _millis(window.get("end")),
        "requests": requests,
        "errors": window.get("errors"),
        "errorRate": (window.get("errors") or 0) / requests if requests else None,
        "errorsByKind": window.get("errorsByKind") or {},
        "latencySeconds": _latencies(window, ("min", "p50", "p95", "p99", "max")),
        "totalRequests": _count(sum(life["requests"] for life in lifetimes)) if lifetimes else None,
        "totalErrors": _count(sum(life["errors"] for life in lifetimes)) if lifetimes else None,
        "statsModelVersion": window.get("modelVersion"),
    }


def _versions_served(found: list[StoredEntity], stale_windows: float) -> list[dict[str, Any]]:
    """Each version the deployment served with its live figures, every replica merged, in
    the order they were first heard of."""
    replicas = {e.ref: _entries(e.attributes.get("replicas")) for e in found}
    # Staleness is judged against the deployment's newest window, not the reader's clock:
    # the same catalog gives the same report whenever it is read.
    heard = [_moment(r.get("lastHeard")) for rs in replicas.values() for r in rs.values()]
    newest = max((h for h in heard if h is not None), default=None)
    out = []
    for entity in found:
        a = entity.attributes
        lifetime: dict[str, Any] = a.get("lifetime") or {}
        served_by = []
        for instance, r in sorted(replicas[entity.ref].items()):
            last = _moment(r.get("lastHeard"))
            window = float(r.get("windowSeconds") or 0)
            silent = (newest - last).total_seconds() if newest and last else 0.0
            served_by.append(
                {
                    "instance": instance,
                    "host": r.get("host"),
                    "firstHeard": r.get("firstHeard"),
                    "lastHeard": r.get("lastHeard"),
                    "requests": r.get("requests"),
                    "stale": window > 0 and silent > stale_windows * window,
                }
            )
        out.append(
            {
                "version": a.get("version"),
                "requests": _count(lifetime.get("requests")),
                "errors": _count(lifetime.get("errors")),
                "windows": _count(lifetime.get("windows")),
                "errorRate": lifetime.get("errorRate"),
                "errorsByKind": a.get("errorsByKind") or {},
                "latencySeconds": _latencies(lifetime),
                "firstWindowStart": _millis(a.get("firstWindowStart")),
                "lastWindowEnd": _millis(a.get("lastWindowEnd")),
                "replicas": served_by,
                "rollups": [
                    {
                        "start": start,
                        "end": r.get("end"),
                        "requests": r.get("requests"),
                        "errors": r.get("errors"),
                        # Known ones only, as the rollup has them.
                        "latencySeconds": {k: v for k, v in _latencies(r).items() if v is not None},
                    }
                    for start, r in sorted(_entries(a.get("rollups")).items())
                ],
                "drift": a.get("driftVerdict"),
                "driftedFeatures": a.get("driftedFeatures") or [],
                "features": [
                    {"name": name, **f} for name, f in sorted(_entries(a.get("features")).items())
                ],
            }
        )
    return sorted(out, key=lambda v: (v["firstWindowStart"] or "", str(v["version"])))


def _latencies(
    figures: Mapping[str, Any],
    names: Sequence[str] = ("min", "mean", "p50", "p95", "p99", "max"),
) -> dict[str, Any]:
    """``{"p99": ...}`` from figures named as the sink writes them (``latencyP99Seconds``)."""
    return {name: figures.get(f"latency{name.title()}Seconds") for name in names}


def schema_history(changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Schema changes oldest first. Every replica of a deployment announces the change of the
    version it loads: the same change announced again is one entry, with how many times it
    was announced (the first announcement's time, and its producer's claimed verdict). A
    change made again after another is an entry of its own."""
    history: list[dict[str, Any]] = []
    latest: dict[Any, dict[str, Any]] = {}  # per side, its newest entry
    for c in changes:
        last = latest.get(c.get("side"))
        if last is not None and (last["previousFingerprint"], last["newFingerprint"]) == (
            c.get("previousFingerprint"),
            c.get("newFingerprint"),
        ):
            last["announcements"] += 1
            continue
        entry = latest[c.get("side")] = {
            "changedAt": _millis(c.get("changedAt")),
            "side": c.get("side"),
            "previousFingerprint": c.get("previousFingerprint"),
            "newFingerprint": c.get("newFingerprint"),
            "compatibility": c.get("compatibility"),
            "claimedCompatibility": c.get("claimedCompatibility"),
            "announcements": 1,
        }
        history.append(entry)
    return history


def _entries(value: Any) -> dict[str, dict[str, Any]]:
    """A map of ``key=value; ...`` entries (replicas, rollups, features), read back."""
    return {str(key): from_words(text) for key, text in (value or {}).items()}


def _moment(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text)) if text else None
    except ValueError:
        return None


def _count(value: Any) -> int | None:
    return None if value is None else int(value)


def build_report(
    reader: CatalogReader,
    model: str,
    cluster: str | None = None,
    version: str | None = None,
    stale_windows: float = DEFAULT_STALE_WINDOWS,
) -> Report:
    model_entity = find_model(reader, model, cluster)
    _, model_cluster = naming.split(model_entity.qualified_name)
    versions = model_versions(reader, model_entity)
    current = find_version(reader, model_entity, version, versions)
    version_qn = current.qualified_name
    attrs = current.attributes

    training = [r.entity for r in reader.referrers(MODEL_VERSION, version_qn, "outputs")]
    sources: list[dict[str, Any]] = []
    training_info: dict[str, Any] = {
        "runId": attrs.get("trainingRunId"),
        "runUrl": attrs.get("trainingRunUrl"),
        "hyperParameters": attrs.get("hyperParameters") or {},
        "sources": sources,
    }
    for process in training:
        for source in _refs(process.references.get("inputs")):
            stored = reader.entity(source.type_name, source.qualified_name)
            schemas = [
                _schema(reader, r.entity.ref)
                for r in reader.referrers(source.type_name, source.qualified_name, "describes")
            ]
            sources.append(
                {
                    "type": source.type_name,
                    "qualifiedName": source.qualified_name,
                    "name": stored.attributes.get("name") if stored else None,
                    "description": stored.attributes.get("description") if stored else None,
                    "classifications": list(stored.all_classifications) if stored else [],
                    "schemas": schemas,
                }
            )

    deployments: list[dict[str, Any]] = []
    for referrer in reader.referrers(MODEL_VERSION, version_qn, "inputs"):
        process = referrer.entity
        if process.type_name != DEPLOYMENT:
            continue
        pa = process.attributes
        stats = [
            r.entity
            for r in reader.referrers(DEPLOYMENT, process.qualified_name, "deployment")
            if r.entity.type_name == SERVING_STATS
        ]
        deployments.append(
            {
                "name": pa.get("name"),
                "qualifiedName": process.qualified_name,
                "status": pa.get("status"),
                "statusReason": pa.get("statusReason"),
                "serverKind": pa.get("serverKind"),
                "environment": pa.get("environment"),
                "runtime": {
                    k: pa.get(k)
                    for k in (
                        "language",
                        "languageVersion",
                        "containerImage",
                        "host",
                        "endpoint",
                        "replicas",
                    )
                },
                "inputs": [
                    r.qualified_name
                    for r in _refs(process.references.get("inputs"))
                    if r.type_name != MODEL_VERSION
                ],
                "outputs": [r.qualified_name for r in _refs(process.references.get("outputs"))],
                "classifications": list(process.all_classifications),
                "propagationPending": process.propagation_pending,
                "live": _live(stats),
                "versionsServed": _versions_served(stats, stale_windows),
            }
        )

    changes = sorted(
        (
            r.entity.attributes
            for r in reader.referrers(MODEL_VERSION, version_qn, "modelVersion")
            if r.entity.type_name == SCHEMA_CHANGE
        ),
        key=lambda a: a.get("changedAt") or 0,
    )
    input_ref = current.references.get("inputSchema")
    output_ref = current.references.get("outputSchema")
    lineage = model_lineage(reader, current, deployments=[d["qualifiedName"] for d in deployments])

    data: dict[str, Any] = {
        "model": {
            "name": model,
            "cluster": model_cluster,
            "qualifiedName": model_entity.qualified_name,
            "owner": model_entity.attributes.get("owner"),
            "latestVersion": model_entity.attributes.get("latestVersion"),
            "versions": [
                {
                    "version": v.attributes.get("version"),
                    "status": v.attributes.get("status"),
                    "statusReason": v.attributes.get("statusReason"),
                    "loadedAt": _millis(v.attributes.get("loadedAt")),
                    "replacesVersion": v.attributes.get("replacesVersion"),
                }
                for v in versions
            ],
        },
        "version": {
            "version": attrs.get("version"),
            "qualifiedName": version_qn,
            "status": attrs.get("status"),
            "loadedAt": _millis(attrs.get("loadedAt")),
        },
        "type": {
            k: attrs.get(k)
            for k in ("framework", "frameworkVersion", "flavor", "algorithm", "task")
        },
        "artifact": {
            "uri": attrs.get("artifactUri"),
            "scheme": attrs.get("artifactScheme"),
            "encryptedAtRest": encrypted_at_rest(attrs),
            "accessMode": attrs.get("accessMode"),
            "sizeBytes": (attrs.get("artifactSize") or {}).get("bytes"),
            "contentHash": attrs.get("contentHash"),
            "storage": storage_assessment(attrs),
        },
        "training": training_info,
        "quality": {
            "trained": attrs.get("metrics") or {},
            "live": [{"deployment": d["qualifiedName"], **d["live"]} for d in deployments],
            "byVersion": [
                {"deployment": d["qualifiedName"], "versions": d["versionsServed"]}
                for d in deployments
            ],
        },
        "schemas": {
            "input": _schema(reader, input_ref if isinstance(input_ref, Ref) else None),
            "output": _schema(reader, output_ref if isinstance(output_ref, Ref) else None),
            "history": schema_history(changes),
        },
        "taxonomy": {
            "tags": attrs.get("tags") or [],
            "classifications": list(current.classifications),
            "propagatedClassifications": {
                name: list(origins)
                for name, origins in sorted(current.propagated_classifications.items())
            },
            "properties": attrs.get("properties") or {},
            "propagationPending": current.propagation_pending,
        },
        "processes": deployments,
        "lineage": {
            "nodes": sorted(lineage.nodes),
            "relations": [(r.from_entity_id, r.to_entity_id) for r in lineage.relations],
        },
    }
    return Report(data, lineage)


# -- text for people -------------------------------------------------------------------------


def _line(label: str, value: Any) -> str:
    return f"  {label:<22} {'-' if value in (None, '', [], {}) else value}"


def _tags(names: list[str] | None) -> str:
    return f"  [{', '.join(names)}]" if names else ""


def _fields(schema: dict[str, Any] | None) -> list[str]:
    if not schema:
        return ["    (none reported)"]
    out = [f"    fingerprint {schema.get('fingerprint')}"]
    for field in schema.get("fields") or []:
        nullable = "?" if field.get("nullable") else ""
        tags = _tags(field.get("classifications"))
        out.append(f"    - {field.get('name')}: {field.get('type')}{nullable}{tags}")
    return out


def render_text(report: Report) -> str:
    d = report.data
    out: list[str] = []
    model, version = d["model"], d["version"]
    out.append(f"Governance report: {model['name']} version {version['version']}")
    out.append(f"  ({version['qualifiedName']}, status {version['status']})")
    out.append("")
    out.append("Versions")
    for v in model["versions"]:
        out.append(
            f"  {v['version']:<10} {v['status'] or '-':<9} loaded {v['loadedAt'] or '-'}"
            + (f"  ({v['statusReason']})" if v.get("statusReason") else "")
        )
    out.append("")
    out.append("1. Training sources")
    for s in d["training"]["sources"] or [{"qualifiedName": "(none reported)"}]:
        tags = (
            f"  [{', '.join(s.get('classifications') or [])}]" if s.get("classifications") else ""
        )
        out.append(f"  - {s['qualifiedName']} ({s.get('type', '-')}){tags}")
    out.append("2. Parameters")
    out.append(_line("training run", d["training"]["runId"]))
    out.append(_line("run URL", d["training"]["runUrl"]))
    for key, value in sorted(d["training"]["hyperParameters"].items()):
        out.append(_line(key, value))
    art = d["artifact"]
    out.append("3. Artifact storage")
    out.append(_line("location", art["uri"]))
    out.append(_line("encrypted at rest", art["encryptedAtRest"]))
    out.append(_line("access", art["accessMode"]))
    out.append(_line("content hash", art["contentHash"]))
    findings = "; ".join(art["storage"]["findings"])
    out.append(
        _line("assessment", art["storage"]["verdict"] + (f" ({findings})" if findings else ""))
    )
    out.append("4. Model type")
    for key, value in d["type"].items():
        out.append(_line(key, value))
    out.append("5. Quality")
    for key, value in sorted(d["quality"]["trained"].items()):
        out.append(_line(f"trained {key}", value))
    for live in d["quality"]["live"]:
        if live["windowEnd"] is None:
            out.append(f"  live on {live['deployment']}: no scoring window reported yet")
            continue
        lat = live["latencySeconds"]
        rate = live["errorRate"]
        quantiles = "/".join(
            "-" if lat[k] is None else f"{lat[k] * 1000:.1f} ms" for k in ("p50", "p95", "p99")
        )
        total = live["totalRequests"]
        out.append(
            f"  live on {live['deployment']}: {live['requests'] or 0} requests in the last "
            f"window (to {live['windowEnd']}), error rate "
            f"{'-' if rate is None else f'{rate:.2%}'}, p50/p95/p99 {quantiles}; "
            f"{'-' if total is None else total} requests in total"
        )
    for served in d["quality"]["byVersion"]:
        out += _versions_table(served["deployment"], served["versions"])
        reported = [v for v in served["versions"] if v["version"] == version["version"]]
        for v in reported:
            out += _features_table(served["deployment"], v)
    out.append("6. Data definitions")
    out.append("  input:")
    out += _fields(d["schemas"]["input"])
    out.append("  output:")
    out += _fields(d["schemas"]["output"])
    for change in d["schemas"]["history"] or []:
        verdict, claimed = change["compatibility"], change["claimedCompatibility"]
        differs = claimed not in (None, verdict, "UNKNOWN")
        times = change["announcements"]
        out.append(
            f"  changed {change['changedAt']}: {change['side'].lower()} "
            f"{change['previousFingerprint']} -> {change['newFingerprint']} "
            f"({verdict}{f', the producer claimed {claimed}' if differs else ''})"
            + (f", announced {times} times" if times > 1 else "")
        )
    tax = d["taxonomy"]
    out.append("7. Taxonomy and classifications")
    out.append(_line("tags", ", ".join(tax["tags"])))
    out.append(_line("classifications", ", ".join(tax["classifications"])))
    for name, origins in tax["propagatedClassifications"].items():
        out.append(_line(f"{name} (propagated)", "from " + ", ".join(origins)))
    if tax["propagationPending"] or any(p["propagationPending"] for p in d["processes"]):
        out.append(
            _line(
                "propagation",
                "still running in Atlas (pending tasks): classifications propagated along the "
                "lineage may not all show yet; read the report again shortly",
            )
        )
    out.append("8. Schemas of the sources")
    for s in d["training"]["sources"]:
        for schema in s.get("schemas") or [None]:
            out.append(f"  {s['qualifiedName']}:")
            out += _fields(schema)
    out.append("9. Processes using the model, and the data flowing through them")
    for p in d["processes"] or [{"name": "(none)"}]:
        if "qualifiedName" not in p:
            out.append("  (no deployment reported)")
            continue
        out.append(f"  {p['name']} [{p['status']}] on {p['runtime'].get('host') or '-'}")
        out.append(
            f"    {', '.join(p['inputs']) or '-'} + model -> {', '.join(p['outputs']) or '-'}"
        )
        if p["classifications"]:
            out.append(f"    classifications: {', '.join(p['classifications'])}")
    out.append("10. Who may see it")
    visible = sorted({c for p in d["processes"] for c in p["classifications"]})
    out.append(
        "  data flowing through the deployments is classified "
        + (", ".join(visible) if visible else "(no classification)")
    )
    return "\n".join(out)


def _ms(seconds: Any) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _number(value: Any, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def _versions_table(deployment: str, versions: list[dict[str, Any]]) -> list[str]:
    if not versions:
        return []
    out = [
        f"  versions served on {deployment}, every replica's windows merged:",
        f"    {'version':<10} {'requests':>9} {'error rate':>10} {'p50':>9} {'p95':>9} "
        f"{'p99':>9}  {'replicas':<12} drift",
    ]
    for v in versions:
        lat = v["latencySeconds"]
        rate = v["errorRate"]
        stale = sum(1 for r in v["replicas"] if r["stale"])
        replicas = f"{len(v['replicas'])}" + (f" ({stale} stale)" if stale else "")
        drift = v["drift"] or "-"
        if v["driftedFeatures"]:
            drift += ": " + ", ".join(v["driftedFeatures"])
        out.append(
            f"    {v['version']!s:<10} {_number(v['requests'], 'd'):>9} "
            f"{'-' if rate is None else f'{rate:.2%}':>10} {_ms(lat['p50']):>9} "
            f"{_ms(lat['p95']):>9} {_ms(lat['p99']):>9}  {replicas:<12} {drift}"
        )
    return out


def _features_table(deployment: str, version: dict[str, Any]) -> list[str]:
    if not version["features"]:
        return []
    out = [
        f"  inputs of version {version['version']} on {deployment}, training vs serving:",
        f"    {'feature':<22} {'training mean':>14} {'serving mean':>14} {'serving nulls':>14} "
        f"{'PSI':>7}  verdict",
    ]
    for f in version["features"]:
        out.append(
            f"    {str(f['name'])[:22]:<22} {_number(f.get('trainingMean')):>14} "
            f"{_number(f.get('servingMean')):>14} {_number(f.get('servingNulls'), '.0f'):>14} "
            f"{_number(f.get('psi'), '.3f'):>7}  {f['verdict']}"
        )
    return out


def live_notes(report: Report) -> dict[str, list[str]]:
    """Per deployment in the lineage picture, one line of live figures per version served."""
    notes: dict[str, list[str]] = {}
    for served in report.data["quality"]["byVersion"]:
        lines = []
        for v in served["versions"]:
            rate = v["errorRate"]
            lines.append(
                f"v{v['version']}: {_number(v['requests'], 'd')} req, "
                f"{'-' if rate is None else f'{rate:.1%}'} err, "
                f"p99 {_ms(v['latencySeconds']['p99'])}, {len(v['replicas'])} replicas"
                + (f", drifted: {', '.join(v['driftedFeatures'])}" if v["driftedFeatures"] else "")
            )
        if lines:
            notes[entity_key(Ref(DEPLOYMENT, served["deployment"]))] = lines
    return notes
