"""Moved to :mod:`slimq.zoo.text` (sentences, WordPiece, feeds); the vocabulary comes from
:func:`slimq.zoo.minilm.vocab_path`. Kept so older benchmark scripts still import."""

from __future__ import annotations

from slimq.zoo.text import CALIB_MODULES, HELDOUT_MODULES, WordPiece, feeds, sentences

__all__ = ["CALIB_MODULES", "HELDOUT_MODULES", "WordPiece", "feeds", "sentences"]
