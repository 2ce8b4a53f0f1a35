"""Write the contract's test vectors to schemas/vectors/ (see schemas/vectors/README.md).

    .venv/bin/python scripts/make_test_vectors.py           # (re)write the files
    .venv/bin/python scripts/make_test_vectors.py --check   # exit 1 if a file would change

Each vector is ``<name>.bin``, the message value exactly as the project writes it, and
``<name>.json``, the same record's values read back from those bytes. The values are built in
``demo.vectors``; running this twice writes identical files. Re-run it only for a deliberate
new contract version: the vectors are what producers in other languages test against.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

from fastavro import schemaless_reader

from demo import vectors

_HEADER = 10  # 0xC3 0x01 and the 8-byte fingerprint


def _json_value(value: Any) -> Any:
    # The reader gives the payload union as (record name, record); every other union (a value
    # or null) is returned plain.
    if isinstance(value, tuple):
        name, record = value
        return {name: _json_value(record)}
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def _dumps(document: dict[str, Any]) -> str:
    """Indented JSON with every list of scalars on one line: a sketch's counts one per line
    would bury the record."""
    inline: list[str] = []

    def mark(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: mark(v) for k, v in value.items()}
        if isinstance(value, list):
            if any(isinstance(v, dict | list) for v in value):
                return [mark(v) for v in value]
            inline.append(json.dumps(value, ensure_ascii=False))
            return f"\x00{len(inline) - 1}\x00"
        return value

    text = json.dumps(mark(document), indent=2, ensure_ascii=False)
    return re.sub(r'"\\u0000(\d+)\\u0000"', lambda m: inline[int(m[1])], text) + "\n"


def _record(value: bytes, schema: Any) -> Any:
    body = io.BytesIO(value[_HEADER:])
    return schemaless_reader(
        body, schema, None, return_record_name=True, return_record_name_override=True
    )


def render() -> dict[str, bytes]:
    """Every file of the vector directory, by file name."""
    event_schema, descriptor_schema = vectors.body_schemas()
    values = vectors.values()
    files: dict[str, bytes] = {}
    documents: dict[str, dict[str, Any]] = {}
    for vector in vectors.event_vectors():
        documents[vector.name] = {
            "about": vector.about,
            "schema": "schemas/model_event.avsc",
            "kafka_key": vectors.kafka_key(vector.event),
        }
    documents[vectors.DESCRIPTOR_VECTOR] = {
        "about": "version 2 of wine-classifier published on the model control topic",
        "schema": "schemas/model_descriptor.avsc",
        # As demo/publish_model.py keys it; the events' key is the emitter's.
        "kafka_key": vectors.descriptor().name,
    }
    for name, document in documents.items():
        value = values[name]
        schema = descriptor_schema if name == vectors.DESCRIPTOR_VECTOR else event_schema
        document["fingerprint"] = value[2:_HEADER].hex()
        document["record"] = _json_value(_record(value, schema))
        files[f"{name}.bin"] = value
        files[f"{name}.json"] = _dumps(document).encode("utf-8")
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if any file would change"
    )
    parser.add_argument("--dir", type=Path, default=vectors.VECTOR_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    directory: Path = args.dir
    stale = []
    for name, content in render().items():
        path = directory / name
        if path.exists() and path.read_bytes() == content:
            continue
        stale.append(name)
        if not args.check:
            directory.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    if args.check and stale:
        print(f"stale test vectors in {directory}: {', '.join(stale)}", file=sys.stderr)
        return 1
    print(f"{len(stale)} file(s) written in {directory}" if stale else f"{directory} is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
