"""White-box operators on a tiny Hugging Face BERT built in the test: structured pruning of
attention heads and feed-forward neurons (the width stays), a narrow transformer student, and
quantization-aware training of every linear layer exported as int8 (QLinearMatMul) with int8
weights stored."""
from __future__ import annotations

import numpy as np
import pytest

from workloads import models
from workloads.cache import Cache
from workloads.data import Dataset
from workloads.prepare import prepare
from workloads.runtime import ArtifactRunner
from tests.tiny import chain

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LEN, HEADS, LAYERS, HIDDEN, FFN = 16, 4, 2, 32, 96


def _data(split, ctx=None):
    n = {"train": 320, "calibration": 32, "eval": 96}[split]
    rng = np.random.default_rng({"train": 0, "calibration": 1, "eval": 2}[split])
    y = rng.integers(0, 2, n)
    lengths = rng.integers(6, LEN + 1, n)
    ids = np.zeros((n, LEN), dtype=np.int64)
    mask = np.zeros((n, LEN), dtype=np.int64)
    for i in range(n):           # class 0 sentences use tokens 10..49, class 1 tokens 50..89
        lo = 10 + 40 * y[i]
        ids[i, :lengths[i]] = rng.integers(lo, lo + 40, lengths[i])
        mask[i, :lengths[i]] = 1
    return Dataset("tokens", "text_classification", {"input_ids": ids, "attention_mask": mask},
                   y.astype(np.int64), ("a", "b"))


def _build(ctx):
    from transformers import BertConfig, BertForSequenceClassification

    from workloads.training import fit

    torch.manual_seed(ctx.seed)
    cfg = BertConfig(vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                     intermediate_size=FFN, max_position_embeddings=LEN, num_labels=2)
    bert = BertForSequenceClassification(cfg)

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).logits

    m = Classifier()
    fit(m, _data("train"), input_names=["input_ids", "attention_mask"], epochs=3, batch_size=32, lr=3e-3,
        seed=ctx.seed)
    return m.eval()


@pytest.fixture()
def tiny_bert(monkeypatch):
    from workloads.models import InputSpec, ModelEntry

    entry = ModelEntry("tiny_bert", "text_classification", "test model",
                       (InputSpec("input_ids", "int64", (1, LEN)), InputSpec("attention_mask", "int64", (1, LEN))),
                       ("logits",), "accuracy", True, "built in the test", _build, _data, num_classes=2)
    monkeypatch.setitem(models._REGISTRY, "tiny_bert", entry)
    torch.set_num_threads(1)
    return entry


def _weights(path) -> dict[str, tuple]:
    import onnx

    return {i.name: tuple(i.dims) for i in onnx.load(str(path)).graph.initializer}


def test_structured_pruning_removes_heads_and_neurons_and_keeps_the_width(tiny_bert, tmp_path):
    r = prepare("tiny_bert", chain({"prune": {"ratio": 0.5, "epochs": 2, "lr": 1e-3}}), cache=Cache(tmp_path))
    rep = r.manifest["report"]["prune"]
    dims = _weights(r.path / "seg0.onnx")
    # the encoder's projections, exported transposed as MatMul weights [in, out]: per layer,
    # query/key/value 32 -> 16 (4 heads of 8 -> 2), attention output 16 -> 32, feed-forward
    # 32 -> 48 -> 32 (96 neurons -> 48); the residual width 32 is kept everywhere
    from collections import Counter

    matmuls = Counter(d for n, d in dims.items() if n.startswith("onnx::MatMul"))
    assert matmuls == {(HIDDEN, HIDDEN // 2): 3 * LAYERS, (HIDDEN // 2, HIDDEN): LAYERS,
                       (HIDDEN, FFN // 2): LAYERS, (FFN // 2, HIDDEN): LAYERS}
    assert dims["bert.bert.embeddings.word_embeddings.weight"] == (100, HIDDEN)
    assert rep["params_after"] < rep["params_before"] and rep["flops_after"] < rep["flops_before"]
    assert r.value >= r.baseline - 0.1
    out = ArtifactRunner(r.path).run(_data("eval").sample(0))
    assert out.done and np.isfinite(out.tensors["logits"]).all()


def test_narrow_transformer_student_is_distilled(tiny_bert, tmp_path):
    r = prepare("tiny_bert", chain({"distill": {"student": "narrow", "ratio": 0.5, "epochs": 2}}),
                cache=Cache(tmp_path))
    rep = r.manifest["report"]["distill"]
    assert rep["student"].startswith("the teacher with 0.5 of its attention heads and feed-forward neurons removed")
    assert rep["params_after"] < rep["params_before"]
    assert r.value >= r.baseline - 0.1


def test_qat_of_a_transformer_runs_int8_matmuls_and_stores_int8_weights(tiny_bert, tmp_path):
    import onnx

    r = prepare("tiny_bert", chain({"qat": {"epochs": 1}}), cache=Cache(tmp_path))
    rep = r.manifest["report"]["qat"]
    linears = LAYERS * 6 + 2                  # q, k, v, attention out, ffn in, ffn out; pooler; classifier
    assert rep["int8_ops"].get("QLinearMatMul", 0) == linears
    assert rep["int8_weights"] == linears
    model = onnx.load(str(r.path / "seg0.onnx"))
    int8 = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
    assert len(int8) == linears
    assert r.value >= r.baseline - 0.1
    assert ArtifactRunner(r.path).run(_data("eval").sample(0)).done
