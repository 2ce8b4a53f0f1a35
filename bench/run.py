"""Run a benchmark suite: ``python bench/run.py emitter`` (or ``sink``, ``atlas``), JSON lines
on stdout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SUITES = ("emitter", "sink", "atlas")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("suite", choices=SUITES)
    args = parser.parse_args()
    if args.suite == "emitter":
        from bench.emitter_bench import run
    elif args.suite == "atlas":
        from bench.atlas_bench import run
    else:
        from bench.sink_bench import run
    for figure in run():
        print(figure.to_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
