"""What every slimq graph rewrite is: an onnx-ir in-place pass that counts what it changed.

``RewritePass()(model)`` returns a :class:`RewriteResult`: onnx-ir's ``PassResult``
(``model``, ``modified``) plus ``count``, the number of sites rewritten. Pattern
rules say at debug level (logger ``slimq.passes``) why a candidate site did not fire.
Passes compose with ``onnx_ir.passes.PassManager``.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass

import onnx_ir as ir

log = logging.getLogger("slimq.passes")


@dataclass
class RewriteResult(ir.passes.PassResult):
    """onnx-ir's pass result plus the number of sites the pass rewrote."""

    count: int = 0


class RewritePass(ir.passes.InPlacePass):
    """An in-place rewrite; `rewrite` edits the model and returns how many sites it changed."""

    def call(self, model: ir.Model) -> RewriteResult:
        count = self.rewrite(model)
        return RewriteResult(model, count > 0, count)

    @abc.abstractmethod
    def rewrite(self, model: ir.Model) -> int:
        """Edit `model` in place; return the number of sites rewritten."""

    def not_fired(self, site: str, why: str) -> None:
        """Record (debug level) why a candidate site was left alone."""
        log.debug("%s: %s not rewritten: %s", type(self).__name__, site, why)


def rewrite_count(pass_: RewritePass, model: ir.Model) -> int:
    """Run `pass_` on `model` in place and return the number of sites it rewrote."""
    result = pass_(model)
    return result.count if isinstance(result, RewriteResult) else int(result.modified)
