"""Operator chains as written in experiment files: names, parameters, order, placement."""
import subprocess
import sys

import pytest

from workloads.errors import WorkloadError
from workloads.operators import OPERATORS, check_placement, parse_chain

W = "strategies[2].operators"


def err(items) -> str:
    with pytest.raises(WorkloadError) as e:
        parse_chain(items, W)
    return str(e.value)


def test_names_and_mappings_parse_with_defaults_filled_in():
    chain = parse_chain(["quantize", {"early_exit": {"threshold": 0.9}}, {"partition": {"cut": 0.4}}], W)
    assert [c.name for c in chain] == ["quantize", "early_exit", "partition"]
    assert chain[0].get("method") == "minmax" and chain[0].get("samples") == 128
    assert chain[1].get("threshold") == 0.9 and chain[1].get("kind") == "heads"
    assert chain[2].get("cut") == 0.4
    assert [c.label() for c in chain] == ["quantize", "early_exit(threshold=0.9)", "partition(cut=0.4)"]


def test_chain_is_hashable_and_equal_for_equal_parameters():
    a = parse_chain([{"quantize": {"samples": 64}}], W)
    b = parse_chain([{"quantize": {"samples": 64, "method": "minmax"}}], W)
    assert a == b and hash(a) == hash(b)


def test_unknown_operator_lists_valid_ones():
    assert err(["shrink"]) == (f"{W}[0]: operator 'shrink' unknown; valid: partition, quantize, early_exit, "
                               "qat, prune, distill")


def test_unknown_parameter_lists_valid_ones():
    assert err([{"partition": {"split": 3}}]) == f"{W}[0].partition: parameter 'split' unknown; valid: cut, verify, atol"


@pytest.mark.parametrize("item, text", [
    ({"quantize": {"method": "kl"}}, "quantize.method: 'kl' is not valid; allowed: minmax | entropy | percentile"),
    ({"quantize": {"samples": 0}}, "quantize.samples: 0 is not valid; allowed: a whole number in 1..100000"),
    ({"quantize": {"per_channel": "yes"}}, "quantize.per_channel: 'yes' is not valid; allowed: true | false | auto"),
    ({"partition": {"atol": 1}}, "partition.atol: 1 is not valid; allowed: a number in (0, 1)"),
    ({"early_exit": {"threshold": 1.5}}, "early_exit.threshold: 1.5 is not valid; allowed: a confidence in (0, 1]"),
    ({"partition": {"cut": 1.2}}, "partition.cut: 1.2 is not valid; allowed: auto, a tensor name, or a FLOPs"),
])
def test_bad_values_name_the_parameter_and_what_is_allowed(item, text):
    assert err([item]).startswith(f"{W}[0].{text}")


def test_post_training_after_placement_is_refused():
    assert err([{"partition": {}}, "quantize"]) == (
        f"{W}[1]: quantize (post-training) after a placement operator; order: training -> post-training -> placement")


def test_an_operator_twice_is_refused():
    assert "appears twice" in err(["quantize", "quantize"])


def test_training_operators_take_a_budget_and_come_first():
    calls = parse_chain(["distill", "quantize"], W)
    assert calls[0].get("epochs") == 3 and calls[0].get("student") == "auto"
    assert parse_chain(["qat"], W)[0].get("epochs") == 1 and parse_chain(["prune"], W)[0].get("ratio") == 0.5
    assert "qat (training) after a post-training operator" in err(["quantize", "qat"])
    assert OPERATORS["prune"].kind == OPERATORS["qat"].kind == OPERATORS["distill"].kind == "training"


def test_placement_and_partition_must_agree():
    chain = parse_chain([{"partition": {"cut": "auto"}}], W)
    check_placement(chain, 2, "s")
    check_placement(chain, 3, "s")
    with pytest.raises(WorkloadError, match="needs a placement on two or more hosts"):
        check_placement(chain, 1, "s")
    two = parse_chain([{"partition": {"cut": ["a", "b"]}}], W)
    with pytest.raises(WorkloadError, match="makes 3 parts but the placement names 2 hosts"):
        check_placement(two, 2, "s")
    with pytest.raises(WorkloadError, match="needs a partition operator"):
        check_placement((), 2, "s")


def test_static_only_quantize_parameters_are_refused_with_dynamic_mode():
    assert err([{"quantize": {"mode": "dynamic", "method": "entropy"}}]) == (
        f"{W}[0].quantize.method: applies to static quantization only (mode: dynamic quantizes activations at "
        "run time); remove it or use mode: static")
    parse_chain([{"quantize": {"mode": "dynamic", "reduce_range": True}}], W)     # applies to both


def test_the_quantize_operator_takes_the_quantizers_own_parameters(tmp_path):
    """One declaration: a value the quantizer refuses gets the same one line from an experiment file."""
    from testbed.experiment import ExperimentError, load_experiment
    from workloads.quantize_params import FIELDS, MAX_SAMPLES, QuantizeParams

    params = OPERATORS["quantize"].params
    assert all(params[k] is FIELDS[k] for k in params if k != "mode")
    assert params["mode"].parse("auto") == "auto" and all(params["mode"].parse(m) == m for m in ("static", "dynamic"))
    path = tmp_path / "exp.yaml"
    path.write_text("name: t\nmodels: [fmnist_cnn]\nstrategies:\n  - name: q\n    operators:\n"
                    f"      - quantize: {{samples: {MAX_SAMPLES + 1}}}\n    placement: edge\n")
    with pytest.raises(ExperimentError) as file_error:
        load_experiment(path, cores=2, memory_bytes=24 << 30)
    with pytest.raises(WorkloadError) as direct:
        QuantizeParams.from_mapping({"samples": MAX_SAMPLES + 1}, "strategies[0].operators[0].quantize")
    assert str(file_error.value) == f"{path}:6: {direct.value}"
    assert str(direct.value).endswith(f"samples: {MAX_SAMPLES + 1} is not valid; allowed: a whole number in "
                                      f"1..{MAX_SAMPLES}")
    QuantizeParams(samples=MAX_SAMPLES)
    parse_chain([{"quantize": {"samples": MAX_SAMPLES}}], W)


def test_default_quantize_call_is_unchanged():
    """Every quantize artifact's cache key holds the call with its defaults: a new operator
    parameter, or a changed default, would rebuild them all."""
    assert parse_chain(["quantize"], W)[0].as_dict() == {"quantize": {
        "mode": "auto", "format": "qdq", "per_channel": "auto", "method": "minmax", "samples": 128,
        "reduce_range": False}}


def test_parsing_an_experiments_operators_imports_neither_numpy_nor_onnx():
    code = "import sys, workloads.operators; print('numpy' in sys.modules, 'onnx' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["False", "False"]
