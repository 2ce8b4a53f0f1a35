"""A lineage graph drawn as a self-contained HTML page with an inline SVG. Pure.

Columns follow the data flow: each node sits one column right of the furthest node that
feeds it, so sources are on the left and the outputs of serving on the right. Processes are
drawn with rounded corners, data sets square; classifications show as badges, propagated
ones dashed; a deployment's live figures per version, when given, show under it. No
script, no external file: the page opens anywhere, offline.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from html import escape

from atlas_sink.catalog.model import LineageGraph, LineageNode

_BOX_W, _BOX_H = 230, 64
_COL_GAP, _ROW_GAP = 90, 34
_NOTE_H = 13
_MARGIN = 30
_PROCESS_TYPES = ("servemeta_training", "servemeta_deployment")
_FILL = {
    "servemeta_training": "#fff4d6",
    "servemeta_deployment": "#e3f1ff",
    "servemeta_model_version": "#e6f7e6",
}
_SENSITIVE = ("PII", "Confidential", "Sensitive")


def _columns(graph: LineageGraph) -> dict[str, int]:
    feeders: dict[str, list[str]] = defaultdict(list)
    for relation in graph.relations:
        feeders[relation.to_entity_id].append(relation.from_entity_id)
    column: dict[str, int] = {}

    def place(key: str, seen: frozenset[str]) -> int:
        if key in column:
            return column[key]
        if key in seen:  # a cycle: lineage should have none, but never loop on one
            return 0
        value = max((place(f, seen | {key}) + 1 for f in feeders[key]), default=0)
        column[key] = value
        return value

    for key in graph.nodes:
        place(key, frozenset())
    return column


def _label(node: LineageNode) -> tuple[str, str]:
    name = node.name or node.qualified_name
    if len(name) > 30:
        name = name[:29] + "\u2026"
    return node.type_name, name


def render_svg(
    graph: LineageGraph, title: str, notes: Mapping[str, Sequence[str]] | None = None
) -> str:
    """``notes``: lines of text to show under a node (its live figures), by node key."""
    notes = notes or {}
    # Rows leave room for the longest note under any node.
    row_gap = _ROW_GAP + _NOTE_H * max((len(n) for n in notes.values()), default=0)
    columns = _columns(graph)
    by_column: dict[int, list[str]] = defaultdict(list)
    for key in sorted(graph.nodes, key=lambda k: (columns[k], graph.nodes[k].type_name, k)):
        by_column[columns[key]].append(key)
    position: dict[str, tuple[int, int]] = {}
    for col, keys in by_column.items():
        for row, key in enumerate(keys):
            x = _MARGIN + col * (_BOX_W + _COL_GAP)
            y = _MARGIN + 40 + row * (_BOX_H + row_gap)
            position[key] = (x, y)
    width = _MARGIN * 2 + (max(by_column, default=0) + 1) * (_BOX_W + _COL_GAP) - _COL_GAP
    rows = max((len(keys) for keys in by_column.values()), default=1)
    height = _MARGIN * 2 + 40 + rows * (_BOX_H + row_gap)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker>'
        "</defs>",
        f'<text x="{_MARGIN}" y="{_MARGIN + 6}" font-size="16" font-weight="bold">'
        f"{escape(title)}</text>",
    ]
    for relation in graph.relations:
        if relation.from_entity_id not in position or relation.to_entity_id not in position:
            continue
        x1, y1 = position[relation.from_entity_id]
        x2, y2 = position[relation.to_entity_id]
        sx, sy, ex, ey = x1 + _BOX_W, y1 + _BOX_H // 2, x2, y2 + _BOX_H // 2
        mid = (sx + ex) // 2
        parts.append(
            f'<path d="M{sx},{sy} C{mid},{sy} {mid},{ey} {ex},{ey}" fill="none" '
            'stroke="#555" stroke-width="1.4" marker-end="url(#arrow)" class="edge"/>'
        )
    for key, (x, y) in position.items():
        node = graph.nodes[key]
        type_name, name = _label(node)
        base = key == graph.base_entity_id
        rounded = 14 if node.type_name in _PROCESS_TYPES else 3
        parts.append(
            f"<g><title>{escape(node.qualified_name)}</title>"
            f'<rect x="{x}" y="{y}" width="{_BOX_W}" height="{_BOX_H}" rx="{rounded}" '
            f'fill="{_FILL.get(node.type_name, "#f4f4f4")}" '
            f'stroke="{"#1a7f37" if base else "#888"}" stroke-width="{3 if base else 1}"/>'
            f'<text x="{x + 10}" y="{y + 18}" fill="#666" font-size="10">{escape(type_name)}'
            f"{' (incomplete)' if node.incomplete else ''}</text>"
            f'<text x="{x + 10}" y="{y + 35}" font-weight="bold">{escape(name)}</text>'
        )
        bx = x + 10
        badges = [(c, False) for c in node.classifications] + [
            (c, True) for c in node.propagated_classifications if c not in node.classifications
        ]
        for classification, propagated in badges:
            colour = "#c62828" if classification in _SENSITIVE else "#2e6da4"
            text_w = 7 * len(classification) + 10
            dash = ' stroke-dasharray="3,2"' if propagated else ""
            parts.append(
                f'<rect x="{bx}" y="{y + 43}" width="{text_w}" height="15" rx="7" fill="white" '
                f'stroke="{colour}"{dash}/>'
                f'<text x="{bx + 5}" y="{y + 54}" font-size="10" fill="{colour}">'
                f"{escape(classification)}</text>"
            )
            bx += text_w + 4
        for line_no, line in enumerate(notes.get(key, ())):
            parts.append(
                f'<text x="{x + 4}" y="{y + _BOX_H + 13 + line_no * _NOTE_H}" font-size="10" '
                f'fill="#333" class="note">{escape(line)}</text>'
            )
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def render_html(
    graph: LineageGraph, title: str, notes: Mapping[str, Sequence[str]] | None = None
) -> str:
    svg = render_svg(graph, title, notes)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title>"
        "<style>body{margin:0;padding:12px;background:#fff;}</style></head>"
        f'<body>{svg}<p style="font:12px sans-serif;color:#666">Boxes with round corners are '
        "processes; arrows follow the data. Dashed badges are classifications propagated "
        "along the lineage.</p></body></html>\n"
    )
