"""A user's own model: an ONNX file or a ``package.module:factory`` of a torch module."""
import textwrap

import numpy as np
import pytest

from workloads import user
from workloads.errors import WorkloadError
from workloads.models import InputSpec


def _tiny_onnx(path, batch="N", features=4, classes=3, weight=1.0):
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [features, classes], [weight] * (features * classes))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_onnx_file_entry(tmp_path):
    path = _tiny_onnx(tmp_path / "my_net.onnx")
    e = user.user_model(str(path))
    assert e.name == "my_net" and e.task == "classification" and e.metric == "agreement"
    assert e.inputs == (InputSpec("x", "float32", (1, 4)),)          # symbolic batch -> 1
    assert e.output_names == ("logits",) and e.num_classes == 3
    assert e.offline and e.weights == ("given",) and str(path) in e.source
    assert user.onnx_path(e) == path.resolve() and user.factory_ref(e) is None
    with pytest.raises(WorkloadError, match="has no torch module to build"):
        e.build(None)
    data = e.dataset("eval", None)
    assert data.labels is None and data.inputs["x"].shape == (64, 4) and data.inputs["x"].dtype == np.float32
    assert "agreement" in data.description
    np.testing.assert_array_equal(data.inputs["x"], e.dataset("eval", None).inputs["x"])
    # a changed file is a new version (new cache keys)
    _tiny_onnx(path, weight=2.0)
    assert user.user_model(str(path)).version != e.version
    # a fixed batch dimension is kept as it is
    assert user.user_model(str(_tiny_onnx(tmp_path / "b.onnx", batch=1))).inputs[0].shape == (1, 4)


def test_onnx_image_input_gets_photo_probes(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["img"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["out"])], "img",
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["batch", 3, 16, 24])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "img.onnx"))
    e = user.user_model(str(tmp_path / "img.onnx"))
    d = e.dataset("calibration", None)
    assert d.inputs["img"].shape == (64, 3, 16, 24) and "crops of photographs" in d.description
    # a sample's sources: its draw and its photograph, which no other split's samples come from
    assert d.sources[0][0] == "probe:2000:0" and d.sources[0][1].startswith("photo:gcompris-qt-data/")
    ev, train = e.dataset("eval", None), e.dataset("train", None)
    assert not ev.source_set() & (d.source_set() | train.source_set())


def test_bad_onnx_files(tmp_path):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf model")
    with pytest.raises(WorkloadError) as e:
        user.user_model(str(bad))
    assert str(e.value).startswith(f"{bad}: not a valid ONNX model (")
    assert "\n" not in str(e.value)
    with pytest.raises(WorkloadError, match="no such ONNX file"):
        user.user_model(str(tmp_path / "missing.onnx"))
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "seq",
                              [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", "seq"])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, ["N", "seq"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "seq.onnx"))
    with pytest.raises(WorkloadError, match=r"input x has a symbolic axis 1 \(seq\); only the batch axis"):
        user.user_model(str(tmp_path / "seq.onnx"))


# a tiny torch module for factory files (tests/unit/test_trust.py's too)
NET = textwrap.dedent("""\
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x)
    """)

FACTORIES = "\nimport torch\n\n" + NET + textwrap.dedent("""
    def as_tuple():
        return Net(), (1, 4)

    def as_attribute():
        net = Net()
        net.example_input_shape = (1, 4)
        return net

    def two_inputs():
        return Net(), {"a": (1, 4), "b": (1, 2)}

    def no_shape():
        return Net()

    def not_a_module():
        return "hello", (1, 4)

    def batch_of_two():
        return Net(), (2, 4)

    def crashes():
        raise RuntimeError("weights file missing")

    not_callable = 42
""")


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "tb_user_factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    import torch
    torch.set_num_threads(1)
    yield "tb_user_factories"
    import sys
    sys.modules.pop("tb_user_factories", None)


def test_factory_entries(factories):
    import torch

    for fn in ("as_tuple", "as_attribute"):
        ref = f"{factories}:{fn}"
        e = user.user_model(ref)
        assert e.name == ref and e.inputs == (InputSpec("input", "float32", (1, 4)),)
        assert e.output_names == ("output",) and e.weights == ("given",) and e.offline
        assert user.factory_ref(e) == ref and user.onnx_path(e) is None
        module = e.build(None)
        assert isinstance(module, torch.nn.Module) and not module.training
        assert module(torch.zeros(1, 4)).shape == (1, 3)
        assert e.dataset("train", None).inputs["input"].shape == (256, 4)
    assert user.user_model(f"{factories}:as_tuple").version == user.user_model(f"{factories}:as_attribute").version
    two = user.user_model(f"{factories}:two_inputs")
    assert [s.name for s in two.inputs] == ["a", "b"] and two.inputs[1].shape == (1, 2)


@pytest.mark.parametrize("fn, message", [
    ("no_shape", r"no example input shape; return \(module, example_input_shape\) from the factory, "
                 r"or set module.example_input_shape, e.g. \(1, 3, 224, 224\)"),
    ("not_a_module", r"the factory not_a_module returned str \('hello'\), not a torch.nn.Module"),
    ("batch_of_two", r"example input shape \(2, 4\) must start with the batch axis 1"),
    ("crashes", r"the factory failed \(RuntimeError: weights file missing\)"),
    ("not_callable", "not_callable is not callable"),
    ("missing", "module tb_user_factories has no attribute missing"),
])
def test_bad_factories(factories, fn, message):
    with pytest.raises(WorkloadError, match=message) as e:
        user.user_model(f"{factories}:{fn}")
    assert str(e.value).startswith(f"{factories}:{fn}: ")


@pytest.mark.parametrize("ref, message", [
    ("no_such_module_xyz:make", r"cannot find module no_such_module_xyz on the Python path; make it importable"),
    ("a:b:c", "not a model reference; expected a path ending in .onnx, path/to/file.py:factory or "
              "package.module:factory"),
    (":make", "not a model reference"),
    ("pkg.mod:", "not a model reference"),
    ("some file:make", "not a model reference"),
])
def test_bad_refs(ref, message):
    with pytest.raises(WorkloadError, match=message):
        user.user_model(ref)
