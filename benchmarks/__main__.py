"""`python -m benchmarks [NAME ...]`: run every benchmark module (or the named ones).

A benchmark is a module `benchmarks/<name>.py` with a `main()` that measures and calls
`benchmarks.results.update_section`; modules named `_*` (helpers, this file) are not benchmarks.
Benchmarks measure; they never pass or fail on time.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import benchmarks

SKIP = {"results"}


def main(names: list[str]) -> int:
    available = sorted(
        m.name
        for m in pkgutil.iter_modules(benchmarks.__path__)
        if m.name not in SKIP and not m.name.startswith("_")
    )
    unknown = sorted(set(names) - set(available))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {available}", file=sys.stderr)
        return 2
    for name in names or available:
        start = time.perf_counter()
        print(f"== benchmark {name}", flush=True)
        importlib.import_module(f"benchmarks.{name}").main()
        print(f"== {name} done in {time.perf_counter() - start:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
