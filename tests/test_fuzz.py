"""Fuzzing the model, calibration-data and recipe loaders (hypothesis, fixed seed, a few hundred cases in CI).

Property: any input either loads or raises a SlimqError subclass - never another exception. The same
properties run for minutes with `python scripts/fuzz.py --minutes N` (see tests/fuzz_targets.py).
"""

import pytest

pytest.importorskip("hypothesis")

import fuzz_targets  # noqa: E402 - needs hypothesis

EXAMPLES = {"model": 150, "data": 150, "arrays": 100, "recipe": 200}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_loader_raises_only_slimq_errors(name):
    before = fuzz_targets.TALLY.get(name, fuzz_targets.Tally()).cases
    fuzz_targets.fuzz_test(name, EXAMPLES[name], seed=0)()
    assert fuzz_targets.TALLY[name].cases - before >= EXAMPLES[name] // 2  # the property really ran
