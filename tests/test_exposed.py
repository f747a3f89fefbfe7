"""The calibration memory bound: exposed tensors run in groups whose per-batch bytes fit the budget."""

from __future__ import annotations

import numpy as np
import pytest

from slimq import testing
from slimq.core.config import StaticConfig
from slimq.runtime.exposed import ExposedRunner, group_tensors
from slimq.static.method import quantize_static

# conv_net tensors for a batch of 4, float32, sizes by hand:
# r1 4x8x16x16, p1 4x8x8x8, r2/c3/r3 4x16x8x8, g 4x16x1x1, f 4x16, logits 4x10
TENSORS = ["r1", "p1", "r2", "c3", "r3", "g", "f", "logits"]
BYTES = {"r1": 32768, "p1": 8192, "r2": 16384, "c3": 16384, "r3": 16384, "g": 256, "f": 256, "logits": 160}


def test_group_tensors_is_a_greedy_split_within_the_budget():
    sizes = {"a": 4, "b": 4, "c": 4, "d": 12, "e": 0, "f": 4}
    # d alone exceeds the budget: a group of its own; e has unknown size (0) and costs nothing
    assert group_tensors(list("abcdef"), sizes, 10) == [["a", "b"], ["c"], ["d"], ["e", "f"]]
    assert group_tensors(list("abcdef"), sizes, 10**9) == [list("abcdef")]
    assert group_tensors(list("abc"), sizes, 8) == [["a", "b"], ["c"]]  # exactly at the budget still fits


def test_exposed_runner_splits_by_real_sizes_and_keeps_each_group_under_budget():
    model = testing.conv_net()
    feeds = testing.random_inputs(model, 1, seed=3, batch=4)[0]
    budget = 33000
    runner = ExposedRunner(model, TENSORS, feeds, budget)
    # greedy over the sizes above: r1 | p1 r2 | c3 r3 (32768; + g would be 33024) | g f logits
    assert runner.groups == [["r1"], ["p1", "r2"], ["c3", "r3"], ["g", "f", "logits"]]
    assert [[o.name for o in s.get_outputs()] for s in runner.sessions] == runner.groups  # only its group
    got = dict(runner.run(feeds))
    for group in runner.groups:
        assert sum(got[t].nbytes for t in group) <= budget
    assert {t: got[t].nbytes for t in TENSORS} == BYTES
    whole = ExposedRunner(model, TENSORS, feeds, 2**40)
    assert whole.groups == [TENSORS]
    for name, value in whole.run(feeds):
        np.testing.assert_array_equal(value, got[name])


def test_calibration_is_identical_with_a_tiny_and_a_huge_budget(monkeypatch, conv_model, conv_calib):
    groups: list[int] = []
    init = ExposedRunner.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        groups.append(len(self.groups))

    monkeypatch.setattr(ExposedRunner, "__init__", spy)
    data = np.concatenate([conv_calib] * 4)  # 192 samples; batches of 64: about 1.6 MB exposed per batch
    results = {}
    for budget in (1, 4096):
        groups.clear()
        cfg = StaticConfig(memory_budget_mb=budget, batch_size=64, holdout=16, show_progress=False)
        results[budget] = (quantize_static(conv_model, data, cfg), list(groups))
    (tiny, tiny_groups), (huge, huge_groups) = results[1], results[4096]
    assert max(tiny_groups) >= 2 and max(huge_groups) == 1  # the 1 MB budget really split the tensors
    assert tiny.plan.params.keys() == huge.plan.params.keys()
    for root, p in huge.plan.params.items():
        q = tiny.plan.params[root]
        assert (q.rmin, q.rmax, q.scale, q.zero_point) == (p.rmin, p.rmax, p.scale, p.zero_point), root
    assert tiny.model.SerializeToString() == huge.model.SerializeToString()


@pytest.mark.parametrize("budget", [1, 10**9])
def test_budget_never_changes_what_the_runner_returns(budget):
    model = testing.conv_net()
    feeds = testing.random_inputs(model, 1, seed=4, batch=2)[0]
    runner = ExposedRunner(model, TENSORS, feeds, budget)
    assert len(runner.groups) == (len(TENSORS) if budget == 1 else 1)  # 1 byte: one tensor per group
    names = [name for name, _ in runner.run(feeds)]
    assert names == TENSORS
