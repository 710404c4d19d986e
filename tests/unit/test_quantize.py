"""Post-training quantization: parameters, quantize_model, what ORT really runs (int8_report),
latency helper and CPU flags. Tiny models, trained for a few steps so that quality checks
mean something; no timing assertions."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest

from workloads import graph
from workloads.data import Dataset
from workloads.errors import WorkloadError
from workloads.metrics import agreement
from workloads.quantize import (FLOAT_COMPUTE, INT8_COMPUTE, METADATA_KEY, Int8Report, LatencyStats, QuantizeParams,
                                cpu_features, int8_report, measure_latency, quantize_model)

torch = pytest.importorskip("torch")
nn = torch.nn
WHERE = "strategies[3].operators[0].quantize"


def _export(model, example, input_name) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # the TorchScript exporter is deprecated
        torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=17, input_names=[input_name],
                          output_names=["logits"], dynamic_axes={input_name: {0: "batch"}, "logits": {0: "batch"}})
    return onnx.load_from_string(buf.getvalue())


def _train(model, x, y, steps=40):
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(steps):
        idx = torch.randint(0, len(X), (64,))
        loss = nn.functional.cross_entropy(model(X[idx]), Y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _images(n, rng):
    """4 classes: a faint colour cast (channel 0, 1 or 2 brighter, or all darker) in noise."""
    y = rng.integers(0, 4, n)
    x = rng.standard_normal((n, 3, 32, 32)).astype(np.float32)
    for c in range(3):
        x[y == c, c] += 0.15
    x[y == 3] -= 0.1
    return x, y


@pytest.fixture(scope="module")
def conv():
    """A small CNN (Conv-BN-ReLU, strided Conv-ReLU, global pool, Linear) on 3x32x32."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x, y = _images(512, rng)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    model = _export(_train(net, x, y), torch.randn(1, 3, 32, 32), "input")
    xe, ye = _images(128, rng)
    return {"model": model,
            "calibration": Dataset("images", "classification", {"input": x[:32]}, y[:32]),
            "eval": {"input": xe}, "eval_labels": ye}


@pytest.fixture(scope="module")
def text():
    """A text-like model: Embedding, Linear+ReLU per token, mean over tokens, Linear."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 100, (512, 16))
    y = ((ids < 50).mean(1) > 0.5).astype(np.int64)

    class Text(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.l1, self.l2 = nn.Embedding(100, 32), nn.Linear(32, 64), nn.Linear(64, 2)

        def forward(self, ids):
            return self.l2(torch.relu(self.l1(self.emb(ids))).mean(1))

    model = _export(_train(Text(), ids, y, steps=60), torch.zeros(1, 16, dtype=torch.long), "input_ids")
    return {"model": model, "eval": {"input_ids": rng.integers(0, 100, (128, 16))}}


def _run(model, feeds):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


# MACs of the CNN: conv1 8x32x32 outputs x 3x3x3, conv2 16x16x16 x 8x3x3, Linear 4 x 16
CONV_MACS = 8 * 32 * 32 * 27 + 16 * 16 * 16 * 72 + 4 * 16
# what ORT 1.2x/1.3x fuses the CNN into on x86 CPUs (BatchNorm folded by pre-processing)
CONV_INT8 = {"QGemm": 1, "QLinearConv": 2, "QLinearGlobalAveragePool": 1}
AGREEMENT = 0.93                # measured 0.97-0.98 (static), 1.0 (dynamic); 0.38 when miscalibrated


# ---- parameters ---------------------------------------------------------------------------------

def test_defaults_and_mapping():
    p = QuantizeParams.from_mapping({}, WHERE)
    assert p == QuantizeParams()
    assert (p.mode, p.format, p.per_channel, p.method, p.samples, p.reduce_range) == \
        ("static", "qdq", "auto", "minmax", 128, False)
    assert (p.activation_qtype, p.weight_qtype) == ("uint8", "int8")
    q = QuantizeParams.from_mapping({"mode": "dynamic", "op_types": ["MatMul"], "exclude_nodes": ("a",),
                                     "per_channel": False, "weight_type": "uint8"}, WHERE)
    assert q.op_types == ("MatMul",) and q.exclude_nodes == ("a",) and q.weight_qtype == "uint8"
    assert QuantizeParams.from_mapping(None, WHERE) == QuantizeParams()


@pytest.mark.parametrize("given, message", [
    ({"bits": 4}, f"{WHERE}: parameter 'bits' unknown; valid: mode, format, per_channel, method, samples, "
                  "activation_type, weight_type, reduce_range, op_types, exclude_nodes"),
    ({"method": "kl"}, f"{WHERE}.method: 'kl' is not valid; allowed: minmax | entropy | percentile"),
    ({"samples": 0}, f"{WHERE}.samples: 0 is not valid; allowed: a whole number in 1..100000"),
    ({"samples": True}, f"{WHERE}.samples: True is not valid; allowed: a whole number in 1..100000"),
    ({"samples": 100_001}, f"{WHERE}.samples: 100001 is not valid; allowed: a whole number in 1..100000"),
    ({"mode": "qat"}, f"{WHERE}.mode: 'qat' is not valid; allowed: static | dynamic"),
    ({"format": "QDQ"}, f"{WHERE}.format: 'QDQ' is not valid; allowed: qdq | qoperator"),
    ({"per_channel": "yes"}, f"{WHERE}.per_channel: 'yes' is not valid; allowed: true | false | auto"),
    ({"activation_type": "int4"}, f"{WHERE}.activation_type: 'int4' is not valid; allowed: int8 | uint8"),
    ({"op_types": "Conv"}, f"{WHERE}.op_types: 'Conv' is not valid; allowed: a non-empty list of names"),
])
def test_bad_parameters(given, message):
    with pytest.raises(WorkloadError) as e:
        QuantizeParams.from_mapping(given, WHERE)
    assert str(e.value) == message


def test_op_types_must_be_quantizable():
    with pytest.raises(WorkloadError) as e:
        QuantizeParams.from_mapping({"mode": "dynamic", "op_types": ["Softmax"]}, WHERE)
    assert str(e.value).startswith(f"{WHERE}.op_types: 'Softmax' cannot be quantized in dynamic mode; "
                                   "allowed: Attention, Conv, ")
    with pytest.raises(WorkloadError, match=r"^quantize\.samples: "):
        QuantizeParams(samples=-1)


# ---- static quantization ---------------------------------------------------------------------------

@pytest.mark.parametrize("params", [
    QuantizeParams(per_channel=True, method="minmax", samples=16),
    QuantizeParams(method="entropy", samples=4),
    QuantizeParams(format="qoperator", method="percentile", samples=8),
], ids=["qdq-minmax-per-channel", "qdq-entropy", "qoperator-percentile"])
def test_static_runs_int8_and_agrees(conv, params):
    q = quantize_model(conv["model"], params, conv["calibration"])
    report = int8_report(q).check()
    assert report.int8_ops == CONV_INT8
    assert report.float_ops == {}
    assert report.qdq_nodes == 2            # quantize the input, dequantize the logits
    assert (report.basis, report.int8_macs, report.float_macs, report.int8_fraction) == \
        ("macs", CONV_MACS, 0, 1.0)
    ref, out = _run(conv["model"], conv["eval"]), _run(q, conv["eval"])
    assert agreement(out, ref) >= AGREEMENT
    assert np.abs(out - ref).max() <= 0.3 * np.abs(ref).max()
    meta = json.loads({p.key: p.value for p in q.metadata_props}[METADATA_KEY])
    assert meta["per_channel"] is True and meta["pre_process"] == "full"
    assert meta["samples"] == min(params.samples, 32) and meta["method"] == params.method


def test_evaluate_quantized_against_float(conv):
    """The pieces together: metrics.evaluate with ORT sessions as runners."""
    import onnxruntime as ort

    from workloads.metrics import evaluate

    def runner(model):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return lambda feeds: sess.run(None, feeds)[0]

    q = quantize_model(conv["model"], QuantizeParams(samples=16), conv["calibration"])
    data = Dataset("eval", "classification", conv["eval"], conv["eval_labels"])
    fp = evaluate(runner(conv["model"]), data, "classification", batch=16)
    res = evaluate(runner(q), data, "classification", reference=runner(conv["model"]), batch=16)
    assert fp["metric"] == res["metric"] == "accuracy" and res["samples"] == 128
    assert fp["value"] >= 0.8                               # the float model learned the task
    assert res["value"] >= fp["value"] - 0.05 and res["agreement"] >= AGREEMENT


def test_agreement_check_has_teeth(conv):
    """Calibrating on data 50x too small clips every activation: the same bound fails."""
    tiny = Dataset("tiny", "classification", {"input": conv["calibration"].inputs["input"] * 0.02}, None)
    q = quantize_model(conv["model"], QuantizeParams(samples=16), tiny)
    assert int8_report(q).int8_ops == CONV_INT8
    assert agreement(_run(q, conv["eval"]), _run(conv["model"], conv["eval"])) < AGREEMENT


def test_partial_quantization_is_reported(conv):
    x = conv["calibration"].inputs["input"]
    extra = Dataset("extra", "classification", {"input": x, "mask": np.ones((len(x), 4))}, None)
    q = quantize_model(conv["model"], QuantizeParams(op_types=("Conv",), samples=8), extra)
    r = int8_report(q)
    assert r.int8_ops == {"QLinearConv": 2}
    assert r.float_ops == {"Gemm": 1}
    assert (r.int8_macs, r.float_macs) == (CONV_MACS - 64, 64)
    assert r.int8_fraction == pytest.approx((CONV_MACS - 64) / CONV_MACS)
    assert "2 QLinearConv" in r.summary() and "1 Gemm" in r.summary()


def test_float_model_fails_check(conv):
    r = int8_report(conv["model"])
    assert r.int8_ops == {} and r.int8_fraction == 0.0 and r.float_macs == CONV_MACS
    # the same count as the partitioning analysis of the unoptimised model (2 FLOPs a MAC)
    flops = graph.analyze(conv["model"]).node_flops
    assert sum(flops[n.name] for n in conv["model"].graph.node if n.op_type in ("Conv", "Gemm")) == 2 * CONV_MACS
    assert r.float_ops == {"FusedConv": 2, "Gemm": 1}     # Conv+ReLU fused, BatchNorm folded
    with pytest.raises(WorkloadError) as e:
        r.check("strategies[0]")
    assert str(e.value) == ("strategies[0]: no int8 compute kernel after ONNX Runtime's graph optimisation "
                            "(float compute left: 2 FusedConv, 1 Gemm; 0 Q/DQ nodes); check op_types/"
                            "exclude_nodes and that the model has Conv, MatMul or Gemm")


def test_static_needs_calibration(conv):
    with pytest.raises(WorkloadError) as e:
        quantize_model(conv["model"], QuantizeParams(), None)
    assert str(e.value) == ("quantize: static quantization needs calibration data; give the model a data set "
                            "or use mode: dynamic")


def test_calibration_must_match_model(conv):
    wrong = Dataset("images28", "classification", {"input": np.zeros((4, 3, 28, 28), np.float32)}, None)
    with pytest.raises(WorkloadError) as e:
        quantize_model(conv["model"], QuantizeParams(), wrong)
    assert str(e.value) == ("calibration data images28: samples have shape (3, 28, 28) float32 but model input "
                            "'input' expects (3, 32, 32) float32 per sample; use a data set made for this model")
    double = Dataset("f64", "classification", {"input": np.zeros((4, 3, 32, 32))}, None)
    with pytest.raises(WorkloadError, match=r"^calibration data f64: samples have shape \(3, 32, 32\) float64 "):
        quantize_model(conv["model"], QuantizeParams(), double)
    other = Dataset("text", "classification", {"ids": np.zeros((4, 16), np.int64)}, None)
    with pytest.raises(WorkloadError) as e:
        quantize_model(conv["model"], QuantizeParams(), other)
    assert str(e.value) == ("calibration data text: no samples for model input 'input' (the data set has ids); "
                            "use a data set made for this model")


# ---- dynamic quantization -----------------------------------------------------------------------

def test_dynamic_text_model(text):
    q = quantize_model(text["model"], QuantizeParams(mode="dynamic"), None)
    r = int8_report(q).check()
    # the quantized embedding feeds MatMulInteger directly; the last Linear fuses with its
    # DynamicQuantizeLinear into DynamicQuantizeMatMul
    assert r.int8_ops == {"DynamicQuantizeMatMul": 1, "MatMulInteger": 1}
    assert r.float_ops == {}
    assert (r.int8_macs, r.int8_fraction) == (16 * 64 * 32 + 2 * 64, 1.0)
    meta = json.loads({p.key: p.value for p in q.metadata_props}[METADATA_KEY])
    assert meta["per_channel"] is False and meta["samples"] == 0
    ref, out = _run(text["model"], text["eval"]), _run(q, text["eval"])
    assert 0.2 < ref.argmax(1).mean() < 0.8            # both classes occur, so agreement means something
    assert agreement(out, ref) >= AGREEMENT


# ---- latency and CPU flags ------------------------------------------------------------------------

def test_measure_latency_shape_only(conv):
    feeds = {"input": conv["eval"]["input"][:1]}
    s = measure_latency(conv["model"], feeds, threads=1, warmup=1, repeats=5)
    assert isinstance(s, LatencyStats) and s.repeats == 5 and len(s.samples_ms) == 5
    assert 0 < s.p10_ms <= s.median_ms <= s.p90_ms
    assert set(s.as_dict()) == {"median_ms", "p10_ms", "p90_ms", "mean_ms", "repeats", "threads"}
    with pytest.raises(WorkloadError):
        measure_latency(conv["model"], feeds, repeats=0)


def test_cpu_features(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n\n"
                    "processor\t: 1\nmodel name\t: Test CPU\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    f = cpu_features(info)
    assert f == {"avx2": True, "avx512f": True, "avx512_vnni": True, "avx_vnni": False, "amx_tile": False,
                 "amx_int8": False, "vnni": True, "model": "Test CPU"}
    assert cpu_features(tmp_path / "missing") == {}
    here = cpu_features()
    assert here == {} or isinstance(here["avx2"], bool)


def test_no_torch_import():
    code = "import sys, workloads.quantize, workloads.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_compute_kernel_the_report_names_has_a_mac_count():
    assert INT8_COMPUTE | FLOAT_COMPUTE <= graph.MAC_OPS


def test_report_serialises():
    r = Int8Report({"QLinearConv": 2}, {}, 2, 1.0, "macs", 10, 0, 5)
    assert json.loads(json.dumps(r.as_dict()))["int8_ops"] == {"QLinearConv": 2}
    assert r.int8_compute == 2
