"""A lineage graph (Atlas's AtlasLineageInfo shape) as text for a terminal."""

from __future__ import annotations

from typing import Any


def render_lineage(graph: dict[str, Any]) -> str:
    """Atlas's lineage JSON as text: upstream chains into the base entity, then downstream."""
    nodes: dict[str, Any] = graph.get("guidEntityMap") or {}
    into: dict[str, list[str]] = {}
    out: dict[str, list[str]] = {}
    for rel in graph.get("relations") or []:
        out.setdefault(rel["fromEntityId"], []).append(rel["toEntityId"])
        into.setdefault(rel["toEntityId"], []).append(rel["fromEntityId"])

    def label(key: str) -> str:
        node = nodes.get(key)
        if node is None:
            return key
        attributes = node.get("attributes") or {}
        qualified_name = attributes.get("qualifiedName", key)
        text = f"{node.get('typeName')} {qualified_name}"
        name = attributes.get("name")
        if name and name != qualified_name:
            text += f" ({name})"
        tags = sorted(node.get("classificationNames") or [])
        if tags:
            text += f" [{', '.join(tags)}]"
        if node.get("isIncomplete"):
            text += " (not written yet)"
        return text

    def walk(
        key: str, edges: dict[str, list[str]], arrow: str, depth: int, seen: set[str]
    ) -> list[str]:
        lines = []
        for nxt in sorted(edges.get(key, []), key=label):
            lines.append(f"{'  ' * depth}{arrow} {label(nxt)}")
            if nxt not in seen:
                lines += walk(nxt, edges, arrow, depth + 1, seen | {nxt})
        return lines

    base = str(graph.get("baseEntityGuid", ""))
    upstream = walk(base, into, "<-", 1, {base}) or ["  (none)"]
    downstream = walk(base, out, "->", 1, {base}) or ["  (none)"]
    return "\n".join([label(base), "upstream:", *upstream, "downstream:", *downstream])
