"""Run every benchmark in bench/ and record each in docs/benchmarks.md.

    python -m bench.run            # all of them, small default sizes
    python -m bench.run listener   # only bench/bench_listener.py

Each module bench/bench_NAME.py has a main(argv) that prints its figures and
calls bench.report.record; a failing benchmark is reported and the others run.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in Path(__file__).parent.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or available()
    failed = []
    for name in names:
        print(f"== bench {name} ==", flush=True)
        started = time.monotonic()
        try:
            module = importlib.import_module(f"bench.bench_{name}")
            module.main([])
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"== {name}: {time.monotonic() - started:.1f} s ==", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
