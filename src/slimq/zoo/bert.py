"""A BERT-style encoder in plain torch, and its ONNX export with the dynamo exporter.

No pretrained weights are downloaded: the model is built with a deterministic
random initialisation (BERT's normal(0, 0.02) for linear and embedding weights,
LayerNorm gains around 1), so any two calls with the same config give the same
ONNX file. The default config matches MiniLM-L6-H384: 6 layers, hidden 384,
12 heads, FFN 1536, vocab 30522. This module imports torch (``slimq[qat]``).

The exported graph takes ``input_ids`` and ``attention_mask`` (int64, shape
(batch, sequence), both dynamic) and optionally ``token_type_ids``, and returns
``last_hidden_state`` (batch, sequence, hidden), plus ``pooler_output`` with
``pooler=True``.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from slimq.core.errors import ConfigError
from slimq.zoo.cache import save_cached


@dataclass(frozen=True)
class BertConfig:
    """Shape of the encoder; the defaults give the 6-layer, hidden-384 benchmark model."""

    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_position: int = 512
    type_vocab: int = 2
    pooler: bool = False
    token_type_input: bool = False  # export token_type_ids as a third input
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden", "layers", "heads", "intermediate", "max_position", "type_vocab"):
            if getattr(self, name) < 1:
                raise ConfigError(f"BertConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.hidden % self.heads:
            raise ConfigError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads}).")


TINY_BERT = BertConfig(vocab_size=1000, hidden=64, layers=2, heads=4, intermediate=256, max_position=128)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate Q/K/V projections and an additive mask."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.hidden // cfg.heads
        self.query, self.key, self.value = (nn.Linear(cfg.hidden, cfg.hidden) for _ in range(3))
        self.out = nn.Linear(cfg.hidden, cfg.hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + mask_bias
        ctx = torch.softmax(scores, dim=-1) @ v
        b, _, s, _ = ctx.shape
        return self.out(ctx.transpose(1, 2).reshape(b, s, -1))


class EncoderLayer(nn.Module):
    """Post-LayerNorm transformer layer: attention + residual + LN, GELU FFN + residual + LN."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = SelfAttention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.hidden, eps=1e-12)
        self.ffn_in = nn.Linear(cfg.hidden, cfg.intermediate)
        self.ffn_out = nn.Linear(cfg.intermediate, cfg.hidden)
        self.ffn_norm = nn.LayerNorm(cfg.hidden, eps=1e-12)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.attention(x, mask_bias))
        return self.ffn_norm(x + self.ffn_out(nn.functional.gelu(self.ffn_in(x))))


class BertEncoder(nn.Module):
    """Embeddings (word + position + token type, LayerNorm), N encoder layers, optional tanh pooler."""

    def __init__(self, cfg: BertConfig = BertConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.position = nn.Embedding(cfg.max_position, cfg.hidden)
        self.token_type = nn.Embedding(cfg.type_vocab, cfg.hidden)
        self.embed_norm = nn.LayerNorm(cfg.hidden, eps=1e-12)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.layers))
        self.pooler = nn.Linear(cfg.hidden, cfg.hidden) if cfg.pooler else None
        self._init_weights(cfg.seed)

    @torch.no_grad()
    def _init_weights(self, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.normal_(0.0, 0.02, generator=g)
            if isinstance(m, nn.Linear):
                m.bias.normal_(0.0, 0.02, generator=g)
            elif isinstance(m, nn.LayerNorm):
                m.weight.normal_(1.0, 0.05, generator=g)
                m.bias.normal_(0.0, 0.02, generator=g)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        x = self.embed_norm(self.word(input_ids) + self.position(pos) + self.token_type(types))
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, mask_bias)
        if self.pooler is None:
            return (x,)
        return x, torch.tanh(self.pooler(x[:, 0]))


def build_bert(cfg: BertConfig = BertConfig()) -> BertEncoder:
    """A freshly initialised encoder in eval mode (deterministic for a given cfg.seed)."""
    return BertEncoder(cfg).eval()


def example_inputs(cfg: BertConfig, batch: int = 2, seq: int = 16, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random token ids within the vocabulary, a mask of ones (and zero token types when exported)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    return (ids, mask, torch.zeros_like(ids)) if cfg.token_type_input else (ids, mask)


def export_bert(path: str | os.PathLike, cfg: BertConfig = BertConfig(), opset: int = 18) -> Path:
    """Export the encoder with ``torch.onnx.export(dynamo=True)``: dynamic batch and sequence, atomic write."""
    path = Path(path)
    if not path.parent.exists():
        raise ConfigError(f"Output folder {path.parent} does not exist; create it first.")
    model = build_bert(cfg)
    args = example_inputs(cfg)
    names = ["input_ids", "attention_mask", "token_type_ids"][: len(args)]
    batch, seq = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("sequence", min=2, max=cfg.max_position)
    dynamic = {n: {0: batch, 1: seq} for n in names}
    outputs = ["last_hidden_state"] + (["pooler_output"] if cfg.pooler else [])
    torch_log = logging.getLogger("torch.onnx")
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)  # "torchvision is not installed" notes from the op registry
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, args, dynamo=True, opset_version=opset, dynamic_shapes=dynamic,
                                        input_names=names, output_names=outputs, optimize=True, verbose=False)
    finally:
        torch_log.setLevel(level)
    if program is None:  # only the legacy exporter (dynamo=False) returns None
        raise RuntimeError(f"torch {torch.__version__}: torch.onnx.export(dynamo=True) returned no ONNX program; "
                           "use the torch version of the qat extra (pyproject.toml).")
    proto = program.model_proto
    onnx.checker.check_model(proto)
    return save_cached(proto, path)


__all__ = ["TINY_BERT", "BertConfig", "BertEncoder", "build_bert", "example_inputs", "export_bert"]


def main(argv: list[str] | None = None) -> int:
    """`python -m slimq.zoo.bert OUT.onnx [--tiny]`: export the encoder (6 layers, hidden 384; --tiny: 2 x 64)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m slimq.zoo.bert", description=main.__doc__)
    ap.add_argument("output")
    ap.add_argument("--tiny", action="store_true", help="2 layers, hidden 64, vocab 1000")
    args = ap.parse_args(argv)
    print(export_bert(args.output, TINY_BERT if args.tiny else BertConfig()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
