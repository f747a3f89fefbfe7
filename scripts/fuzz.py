#!/usr/bin/env python
"""Fuzz slimq's model, calibration-data and recipe loaders for a while (the properties of tests/test_fuzz.py).

    python scripts/fuzz.py --minutes 10            # all targets, round robin, random seeds
    python scripts/fuzz.py --minutes 2 --targets recipe --seed 7

Property: every input either loads or raises a SlimqError subclass. Prints the cases tried per target and
each distinct failure (exception type, message, the innermost slimq frame); exit 1 when anything was found.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import fuzz_targets  # noqa: E402

warnings.simplefilter("ignore")  # onnx/numpy warn about the odd inputs; only exceptions matter here


def _where(exc: BaseException) -> str:
    """The innermost frame in slimq (else the innermost frame) of an exception's traceback."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/slimq/" in f.filename and "/tests/" not in f.filename] or frames
    f = ours[-1] if ours else None
    return f"{Path(f.filename).name}:{f.lineno} {f.name}" if f else "?"


def _leaves(exc: BaseException) -> list[BaseException]:
    group = getattr(exc, "exceptions", None)  # an ExceptionGroup of several distinct failures
    if isinstance(group, (list, tuple)):
        return [leaf for e in group for leaf in _leaves(e)]
    return [exc]


def run(targets: list[str], minutes: float, seed: int, chunk: int) -> dict[str, dict]:
    found: dict[str, dict] = {}
    end = time.monotonic() + 60 * minutes
    i = 0
    while time.monotonic() < end:
        name = targets[i % len(targets)]
        try:
            fuzz_targets.fuzz_test(name, chunk, seed=seed + i + 1, quiet=True)()
        except Exception as exc:  # noqa: BLE001 - a finding of the property
            for leaf in _leaves(exc):
                key = f"{name}: {type(leaf).__name__} at {_where(leaf)}"
                entry = found.setdefault(key, {"count": 0, "message": str(leaf).splitlines()[0][:200] if str(leaf)
                                               else "", "seed": seed + i + 1})
                entry["count"] += 1
        i += 1
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--targets", default=",".join(fuzz_targets.PROPERTIES), help="comma-separated targets")
    p.add_argument("--seed", type=int, default=1, help="base seed (chunk i uses seed + i + 1)")
    p.add_argument("--chunk", type=int, default=200, help="examples per hypothesis run")
    args = p.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    t0 = time.monotonic()
    found = run(targets, args.minutes, args.seed, args.chunk)
    elapsed = time.monotonic() - t0
    tally = fuzz_targets.TALLY
    print(f"fuzzed {elapsed / 60:.1f} min, {sum(t.cases for t in tally.values())} cases: "
          + ", ".join(f"{k} {v.cases}" for k, v in sorted(tally.items())))
    print(f"distinct failures: {len(found)}")
    for key, entry in sorted(found.items()):
        print(f"  {key} (x{entry['count']}, seed {entry['seed']}): {entry['message']}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
