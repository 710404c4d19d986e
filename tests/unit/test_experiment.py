"""The experiment file: loading, defaults, --set, sweeps, artifacts, and one-line errors."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import testbed.experiment
from testbed.experiment import (ArtifactNeed, Experiment, ExperimentError, ModelRef, Requests, Strategy,
                                load_experiment, load_experiment_dict)
from topologies import DirectionSpec, HostSpec
from workloads import models
from workloads.models import InputSpec, ModelEntry

GiB = 1 << 30
BUDGET = {"cores": 2, "memory_bytes": 24 * GiB}   # three_tier: 0.25 / 0.5 / 1 core, 768MiB / 3GiB / 12GiB
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "blackbox-demo.yaml"
BASE = """\
name: t
models: [efficientnet_lite0]
strategies:
  - {name: edge, placement: edge}
"""


def _entry(name: str, weights: tuple[str, ...] = ("pretrained", "random")) -> ModelEntry:
    return ModelEntry(name=name, task="classification", description="fake", inputs=(InputSpec("x", "float32", (1, 4)),),
                      output_names=("y",), metric="accuracy", offline=True, source="tests",
                      build=lambda ctx: None, dataset=lambda split, ctx: None, weights=weights)


@pytest.fixture(autouse=True)
def fake_models(monkeypatch):
    """Tiny registry entries, so nothing here needs torch or the real model zoo."""
    monkeypatch.setattr(models, "_load_builtins", lambda: None)
    monkeypatch.setattr(models, "_REGISTRY", {e.name: e for e in (
        _entry("efficientnet_lite0"), _entry("minilm_sentiment"), _entry("untrained", weights=("random",)))})


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load(path: Path, sets=()) -> Experiment:
    return load_experiment(path, sets, **BUDGET)


def error(path: Path, sets=()) -> str:
    with pytest.raises(ExperimentError) as info:
        load(path, sets)
    return str(info.value)


@pytest.fixture
def example() -> Experiment:
    return load(EXAMPLE)


# ---- the example and the API ---------------------------------------------------------------

def test_example_loads_with_overrides_applied_to_the_topology(example):
    assert example.name == "blackbox-demo"
    assert example.source_path == EXAMPLE
    assert example.topology.name == "three_tier"
    assert example.topology.hosts == (HostSpec("mobile", 0.25, GiB), HostSpec("edge", 0.5, 4 * GiB),
                                      HostSpec("cloud", 1.0, 8 * GiB))
    edge_cloud = DirectionSpec(rate_bps=1_000_000, delay_ms=20.0, loss=0.001)
    assert example.topology.link("edge-cloud").forward == example.topology.link("edge-cloud").reverse == edge_cloud
    assert example.topology.link("mobile-edge").forward == DirectionSpec(rate_bps=200_000_000, delay_ms=5.0)
    assert example.models == (ModelRef("efficientnet_lite0", "pretrained"), ModelRef("minilm_sentiment", "pretrained"))
    assert [s.name for s in example.strategies] == ["mobile", "edge", "cloud", "edge-sptq", "edge-qee",
                                                    "me-partition", "ec-partition"]
    assert example.source == "mobile"
    assert example.requests == Requests(warmup=3, repeat=30, inputs=10, timeout_ms=120_000.0)
    assert example.codec == "binary"


def test_example_strategies_have_full_operator_calls_and_placements(example):
    qee = example.strategy("edge-qee")
    assert [c.name for c in qee.operators] == ["quantize", "early_exit"]
    assert qee.operators[1].get("threshold") == 0.8 and qee.operators[0].get("mode") == "auto"
    assert qee.placement == ("edge",) and qee.parts == 1
    assert example.strategy("ec-partition").placement == ("edge", "cloud")
    assert example.strategy("mobile").operators == ()


def test_example_sweep_grid_is_the_product_in_file_order(example):
    rates = ("1Mbit", "10Mbit", "50Mbit", "100Mbit", "150Mbit", "200Mbit")
    assert example.sweep == (("links.mobile-edge.bandwidth", rates), ("links.edge-cloud.bandwidth", rates))
    grid = example.cells_grid()
    assert len(grid) == 36
    assert grid[0] == {"links.mobile-edge.bandwidth": "1Mbit", "links.edge-cloud.bandwidth": "1Mbit"}
    assert grid[1] == {"links.mobile-edge.bandwidth": "1Mbit", "links.edge-cloud.bandwidth": "10Mbit"}
    assert grid[6] == {"links.mobile-edge.bandwidth": "10Mbit", "links.edge-cloud.bandwidth": "1Mbit"}
    assert grid[-1] == {"links.mobile-edge.bandwidth": "200Mbit", "links.edge-cloud.bandwidth": "200Mbit"}


def test_at_a_point_sets_its_values_and_empties_the_sweep(example):
    point = example.at({"links.mobile-edge.bandwidth": "10Mbit", "links.edge-cloud.bandwidth": "50Mbit"})
    assert point.sweep == () and point.cells_grid() == [{}]
    assert point.topology.link("mobile-edge").forward == DirectionSpec(rate_bps=10_000_000, delay_ms=5.0)
    assert point.topology.link("edge-cloud").reverse == DirectionSpec(rate_bps=50_000_000, delay_ms=20.0, loss=0.001)
    assert point.strategies == example.strategies and point.models == example.models


def test_artifacts_needed_shares_one_artifact_per_chain_and_part_count(example):
    needed = example.artifacts_needed()
    assert all(isinstance(n, ArtifactNeed) for n in needed)
    per_model = [([c.name for c in n.operators], n.parts) for n in needed if n.model.name == "efficientnet_lite0"]
    # mobile/edge/cloud share the plain export; me-/ec-partition share one two-part artifact
    assert per_model == [([], 1), (["quantize"], 1), (["quantize", "early_exit"], 1), (["partition"], 2)]
    assert len(needed) == 8
    model, chain, parts = needed[0]  # unpacks as (ModelRef, chain, parts)
    assert (model, chain, parts) == (ModelRef("efficientnet_lite0"), (), 1)


def test_artifacts_needed_counts_parts_and_swept_operator_parameters(tmp_path):
    path = write(tmp_path, BASE + textwrap.dedent("""\
          - {name: me, operators: [{partition: {cut: auto}}], placement: [mobile, edge]}
          - {name: mec, operators: [{partition: {cut: auto}}], placement: [mobile, edge, cloud]}
          - {name: ee, operators: [early_exit], placement: edge}
        sweep:
          strategies.3.operators.0.early_exit.threshold: [0.5, 0.9]
        """))
    needed = load(path).artifacts_needed()
    assert [(n.operators[0].name if n.operators else None, n.parts) for n in needed] == [
        (None, 1), ("partition", 2), ("partition", 3), ("early_exit", 1), ("early_exit", 1)]
    assert [n.operators[0].get("threshold") for n in needed[3:]] == [0.5, 0.9]


def test_parts_by_host_names_what_each_host_computes_once(tmp_path):
    # calibrate EXPERIMENT checks each host's compute on these: the part of each artifact a
    # strategy places on the host, once per (artifact, part) whatever the strategies sharing it
    path = write(tmp_path, BASE + textwrap.dedent("""\
          - {name: me, operators: [{partition: {cut: auto}}], placement: [mobile, edge]}
          - {name: ec, operators: [{partition: {cut: auto}}], placement: [edge, cloud]}
          - {name: mec, operators: [{partition: {cut: auto}}], placement: [mobile, edge, cloud]}
          - {name: ee, operators: [early_exit], placement: edge}
        sweep:
          strategies.4.operators.0.early_exit.threshold: [0.5, 0.9]
        """))
    by = {h: [((n.operators[0].name if n.operators else None), n.parts, i, s) for n, i, s in parts]
          for h, parts in load(path).parts_by_host().items()}
    assert by["mobile"] == [("partition", 2, 0, "me"), ("partition", 3, 0, "mec")]
    # edge: the whole model, part 2 of the two-part
    # artifact (me), part 1 of the same artifact (ec), part 2 of 3, and both swept exit heads
    assert by["edge"] == [(None, 1, 0, "edge"), ("partition", 2, 1, "me"), ("partition", 2, 0, "ec"),
                          ("partition", 3, 1, "mec"), ("early_exit", 1, 0, "ee"), ("early_exit", 1, 0, "ee")]
    assert by["cloud"] == [("partition", 2, 1, "ec"), ("partition", 3, 2, "mec")]


def test_to_dict_is_json_and_loads_back_equal(example, tmp_path):
    data = json.loads(json.dumps(example.to_dict()))
    assert data["topology"]["links"]["edge-cloud"] == {"bandwidth": "1Mbit", "delay": "20ms", "loss": "0.1%"}
    assert data["requests"] == {"warmup": 3, "repeat": 30, "inputs": 10, "timeout": "120s"}
    assert data["strategies"][5] == {"name": "me-partition", "placement": ["mobile", "edge"],
                                     "operators": [{"partition": {"cut": "auto", "verify": True, "atol": 1e-5}}]}
    assert data["sweep"]["links.edge-cloud.bandwidth"][0] == "1Mbit"
    again = load_experiment_dict(data, **BUDGET)
    assert again == example and again.source_path is None
    assert len(again.cells_grid()) == 36


def test_module_docstring_documents_every_top_level_key():
    doc = testbed.experiment.__doc__
    for key in testbed.experiment.TOP_KEYS:
        assert f"{key}:" in doc
    for word in ("--set", "client", "json-base64", "warmup", "repeat", "inputs", "timeout", "weights", "data",
                 "operators", "placement", "cartesian"):
        assert word in doc


def test_importing_the_module_imports_neither_torch_nor_yaml():
    code = "import sys, testbed.experiment; print(sorted({'torch', 'yaml', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.strip() == "[]"


# ---- defaults and the forms a field may take ------------------------------------------------

def test_minimal_file_gets_documented_defaults(tmp_path):
    exp = load(write(tmp_path, BASE))
    assert exp.topology.name == "three_tier" and exp.topology.host("edge").cpus == 0.5
    assert exp.source == "mobile"      # the topology's first host
    assert exp.requests == Requests(3, 30, 10, 120_000.0)
    assert exp.codec == "binary" and exp.sweep == () and exp.cells_grid() == [{}]
    assert exp.strategies == (Strategy("edge", (), ("edge",)),)


def test_model_mapping_keeps_weights_and_data_relative_to_the_file(tmp_path):
    (tmp_path / "sub" / "reviews").mkdir(parents=True)
    path = write(tmp_path, """\
        name: t
        models:
          - {name: minilm_sentiment, weights: random, data: reviews}
          - minilm_sentiment
          - untrained
        strategies: [{name: edge, placement: edge}]
        """, "sub/exp.yaml")
    exp = load(path)
    assert exp.models == (ModelRef("minilm_sentiment", "random", str(tmp_path / "sub" / "reviews")),
                          ModelRef("minilm_sentiment", "pretrained"), ModelRef("untrained", "random"))


def test_python_topology_is_found_relative_to_the_experiment_file(tmp_path, monkeypatch):
    write(tmp_path, """\
        from topologies import HostSpec, LinkSpec, TopologySpec

        def topology(cores, memory_bytes):
            return TopologySpec("pair", [HostSpec("phone", cpus=cores / 4), HostSpec("server")],
                                [LinkSpec("phone", "server")])
        """, "study/topos/pair.py")
    path = write(tmp_path, """\
        name: t
        topology: topos/pair.py
        hosts: {server: {memory: 2GiB}}
        models: [efficientnet_lite0]
        strategies: [{name: split, operators: [partition], placement: [phone, server]}]
        """, "study/exp.yaml")
    monkeypatch.chdir(tmp_path)   # not the experiment's folder
    exp = load(path)
    assert exp.topology.name == "pair"
    assert exp.topology.hosts == (HostSpec("phone", 0.5), HostSpec("server", None, 2 * GiB))
    assert exp.source == "phone" and exp.strategies[0].placement == ("phone", "server")


def test_yaml_topology_file_and_builtin_parameters(tmp_path):
    write(tmp_path, "hosts: {a: {}, b: {}}\nlinks: {a-b: {delay: 1ms}}\n", "lab.yaml")
    assert load(write(tmp_path, "name: t\ntopology: lab.yaml\nmodels: [efficientnet_lite0]\n"
                                "strategies: [{name: x, placement: b}]\nsource: client\n")).source == "client"
    star = load(write(tmp_path, BASE.replace("placement: edge", "placement: mobile3") + "topology: star:mobiles=3\n"))
    assert star.topology.host_names == ("mobile1", "mobile2", "mobile3", "edge", "cloud")


def test_inline_topology_mapping(tmp_path):
    exp = load(write(tmp_path, BASE + "topology:\n  hosts: {edge: {cpus: 1}}\n"))
    assert exp.topology.hosts == (HostSpec("edge", 1.0),) and exp.source == "edge"


def test_placement_host_string_equals_one_host_list_and_links_may_be_written_backwards(tmp_path):
    exp = load(write(tmp_path, BASE + "  - {name: l, placement: [edge]}\nlinks: {cloud-edge: {delay: 3ms}}\n"))
    assert exp.strategies[0].placement == exp.strategies[1].placement == ("edge",)
    assert exp.topology.link("edge-cloud").forward.delay_ms == 3.0


# ---- --set ---------------------------------------------------------------------------------

def test_set_overrides_values_before_validation(tmp_path):
    exp = load(EXAMPLE, [("links.edge-cloud.bandwidth", "10Mbit"), ("requests.repeat", "5"),
                         ("hosts.edge.cpus", "1"), ("codec", "json-base64"), ("source", "client"),
                         ("strategies.1.placement", "cloud"), ("models.1", "untrained")])
    assert exp.topology.link("edge-cloud").forward == DirectionSpec(rate_bps=10_000_000, delay_ms=20.0, loss=0.001)
    assert exp.requests.repeat == 5 and exp.topology.host("edge").cpus == 1.0
    assert (exp.codec, exp.source) == ("json-base64", "client")
    assert exp.strategy("edge").placement == ("cloud",)
    assert exp.models[1] == ModelRef("untrained", "random")


def test_set_on_a_swept_path_pins_it(example):
    exp = load(EXAMPLE, [("links.edge-cloud.bandwidth", "10Mbit")])
    assert [p for p, _ in exp.sweep] == ["links.mobile-edge.bandwidth"] and len(exp.cells_grid()) == 6
    assert load(EXAMPLE, [("sweep", "{}")]).cells_grid() == [{}]
    assert load(EXAMPLE, [("sweep.codec", "[binary, json-base64]")]).sweep[-1] == ("codec", ("binary", "json-base64"))


def test_set_creates_mappings_and_widens_short_forms(tmp_path):
    path = write(tmp_path, BASE + "  - {name: q, operators: [quantize], placement: edge}\n")
    exp = load(path, [("links.edge-cloud.delay", "20ms"), ("models[0].weights", "random"),
                      ("strategies.1.operators.0.quantize.mode", "dynamic"), ("topology", "star:mobiles=2")])
    assert exp.topology.link("edge-cloud").forward.delay_ms == 20.0
    assert exp.models == (ModelRef("efficientnet_lite0", "random"),)
    assert exp.strategy("q").operators[0].get("mode") == "dynamic"
    assert exp.source == "mobile1"


@pytest.mark.parametrize("sets, message", [
    ([("colour", "red")], "--set: colour: unknown path; allowed: a path starting with a top-level key: name, topology, "
                          "hosts, links, models, strategies, source, requests, load, codec, serving, sweep"),
    ([("requests.repeat", "0")], "--set: requests.repeat: 0 is out of range; allowed: a whole number 1 to 1000000"),
    ([("links.edge-cloud.bandwidth", "1Mbs")], "--set: links.edge-cloud.bandwidth: unknown unit 'Mbs'; "
                                               "allowed: bit, kbit, Mbit, Gbit, Tbit (or bps, kbps, Mbps, Gbps, Tbps)"),
    ([("strategies.3.placement", "edge")], "--set: strategies.3.placement: no item 3 in strategies, which has 1; "
                                           "allowed: an index 0 to 0"),
    ([("strategies.0.placement", "[edge, cloud]")], "--set: strategies[0].placement: placement on 2 hosts needs a "
                                                    "partition operator, e.g. operators: [{partition: {cut: auto}}]"),
    ([("name.x", "1")], "--set: name.x: name is a string, not a mapping or a list; allowed: a path through mappings "
                        "and lists"),
    ([("codec.x", "1")], "--set: codec: a mapping is not a codec; allowed: binary | json-base64"),
    ([("links..delay", "1ms")], "--set: links..delay: an empty part in the path; allowed: names joined by '.', "
                                "e.g. links.edge-cloud.delay"),
    ([("requests.repeat", "[1")], "--set: requests.repeat: '[1' is not a YAML value (YAML syntax error: expected ',' "
                                  "or ']', but got '<stream end>' (column 3)); allowed: a YAML value, e.g. 5, 10Mbit, "
                                  "[mobile, edge] or {cut: auto}"),
])
def test_set_errors_name_the_set(tmp_path, sets, message):
    assert error(write(tmp_path, BASE), sets) == message


# ---- errors in the file: one line with the line number --------------------------------------

ERRORS = [
    ("unknown_top_level_key", BASE + "colour: red\n",
     "5: colour: unknown key; allowed: name, topology, hosts, links, models, strategies, source, requests, load, codec, "
     "serving, sweep"),
    ("name_wrong_type", "name: [a]\nmodels: [efficientnet_lite0]\nstrategies: [{name: e, placement: edge}]\n",
     "1: name: expected a string, got a list; allowed: 1 to 64 letters, digits, '_', '.' or '-', "
     "starting with a letter or digit"),
    ("name_bad", BASE.replace("name: t", "name: -t"),
     "1: name: '-t' is not a usable name; allowed: 1 to 64 letters, digits, '_', '.' or '-', "
     "starting with a letter or digit"),
    ("missing_name", "models: [efficientnet_lite0]\nstrategies: [{name: e, placement: edge}]\n",
     ": name: missing; allowed: 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"),
    ("missing_models", "name: t\nstrategies: [{name: e, placement: edge}]\n",
     ": models: missing; allowed: a list of model names or {name, weights, data} mappings, e.g. [efficientnet_lite0]"),
    ("missing_strategies", "name: t\nmodels: [efficientnet_lite0]\n",
     ": strategies: missing; allowed: a list of {name, operators, placement}, e.g. [{name: edge, placement: edge}]"),
    ("empty_models", "name: t\nmodels: []\nstrategies: [{name: e, placement: edge}]\n",
     "2: models: the list is empty; allowed: a list of model names or {name, weights, data} mappings, "
     "e.g. [efficientnet_lite0]"),
    ("empty_strategies", "name: t\nmodels: [efficientnet_lite0]\nstrategies: []\n",
     "3: strategies: the list is empty; allowed: a list of {name, operators, placement}, "
     "e.g. [{name: edge, placement: edge}]"),
    ("models_not_a_list", "name: t\nmodels: efficientnet_lite0\nstrategies: [{name: e, placement: edge}]\n",
     "2: models: expected a list, got a string; allowed: a list of model names or {name, weights, data} mappings, "
     "e.g. [efficientnet_lite0]"),
    ("unknown_model", "name: t\nmodels:\n  - efficientnet_lite0\n  - resnet\n"
                      "strategies: [{name: e, placement: edge}]\n",
     "4: models[1]: model 'resnet' unknown; valid: efficientnet_lite0, minilm_sentiment, untrained, "
     "a path to an .onnx file, or package.module:factory"),
    ("unknown_weights", "name: t\nmodels:\n  - {name: untrained, weights: pretrained}\n"
                        "strategies: [{name: e, placement: edge}]\n",
     "3: models[0].weights: model untrained: weights 'pretrained' unknown; allowed: random"),
    ("model_key", "name: t\nmodels:\n  - {name: untrained, weight: random}\nstrategies: [{name: e, placement: edge}]\n",
     "3: models[0].weight: unknown key; allowed: name, weights, data"),
    ("model_twice", "name: t\nmodels:\n  - untrained\n  - {name: untrained, weights: random}\n"
                    "strategies: [{name: e, placement: edge}]\n",
     "4: models[1]: listed twice (first as models[0]); allowed: each model (name, weights, data) once"),
    ("model_data_missing", "name: t\nmodels:\n  - {name: untrained, data: nowhere}\n"
                           "strategies: [{name: e, placement: edge}]\n",
     "3: models[0].data: no such file or folder: {dir}/nowhere; allowed: an existing path, relative to the "
     "experiment file's folder"),
    ("duplicate_strategy", BASE + "  - {name: edge, placement: cloud}\n",
     "5: strategies[1].name: duplicate strategy name 'edge' (first at strategies[0]); "
     "allowed: a different name for each strategy"),
    ("strategy_name", BASE + "  - {name: Edge, placement: cloud}\n",
     "5: strategies[1].name: 'Edge' is not a usable strategy name; allowed: 1 to 48 lowercase letters, digits, "
     "'_', '.' or '-', starting with a letter or digit"),
    ("strategy_key", BASE + "  - {name: x, placement: cloud, operator: [quantize]}\n",
     "5: strategies[1].operator: unknown key; allowed: name, operators, placement"),
    ("strategy_no_placement", BASE + "  - name: x\n    operators: [quantize]\n",
     "5: strategies[1]: missing placement; allowed: a host name or a list of host names, e.g. edge or [mobile, edge]"),
    ("strategy_not_a_mapping", "name: t\nmodels: [efficientnet_lite0]\nstrategies:\n  - edge\n",
     "4: strategies[0]: expected a mapping, got a string; allowed: {name: edge, operators: [...], placement: edge}"),
    ("placement_unknown_host", BASE + "  - name: x\n    operators: [partition]\n    placement:\n      - mobile\n"
                                      "      - nowhere\n",
     "9: strategies[1].placement[1]: unknown host 'nowhere'; allowed: hosts of topology three_tier: mobile, edge, "
     "cloud"),
    ("placement_not_adjacent", BASE + "  - {name: x, operators: [partition], placement: [mobile, cloud]}\n",
     "5: strategies[1].placement[1]: mobile and cloud are not linked in topology three_tier; "
     "allowed: hosts linked to mobile: edge"),
    ("placement_host_twice", BASE + "  - {name: x, operators: [partition], placement: [edge, edge]}\n",
     "5: strategies[1].placement[1]: host 'edge' appears twice; allowed: each host once (one part per host)"),
    ("placement_empty", BASE + "  - {name: x, placement: []}\n",
     "5: strategies[1].placement: the list is empty; allowed: a host name or a list of host names, "
     "e.g. edge or [mobile, edge]"),
    ("placement_without_partition", BASE + "  - {name: x, placement: [mobile, edge]}\n",
     "5: strategies[1].placement: placement on 2 hosts needs a partition operator, "
     "e.g. operators: [{partition: {cut: auto}}]"),
    ("partition_on_one_host", BASE + "  - name: x\n    operators: [partition]\n    placement: edge\n",
     "7: strategies[1].placement: a partition needs a placement on two or more hosts, e.g. [mobile, edge]"),
    ("partition_parts_mismatch", BASE + "  - {name: x, operators: [{partition: {cut: [a, b]}}], "
                                        "placement: [mobile, edge]}\n",
     "5: strategies[1].placement: the partition makes 3 parts but the placement names 2 hosts; "
     "give one cut per boundary (a list) or cut: auto"),
    ("unknown_operator", BASE + "  - name: x\n    operators:\n      - quantise\n    placement: edge\n",
     "7: strategies[1].operators[0]: operator 'quantise' unknown; valid: partition, quantize, early_exit, qat, "
     "prune, distill"),
    ("unknown_operator_param", BASE + "  - name: x\n    operators:\n      - quantize\n"
                                      "      - early_exit: {thresh: 0.5}\n    placement: edge\n",
     "8: strategies[1].operators[1].early_exit: parameter 'thresh' unknown; valid: kind, threshold, points, blocks, "
     "epochs"),
    ("bad_operator_param", BASE + "  - name: x\n    operators:\n      - early_exit:\n          threshold: 5\n"
                                  "    placement: edge\n",
     "8: strategies[1].operators[0].early_exit.threshold: 5 is not valid; allowed: a confidence in (0, 1], "
     "or a list of them (one per exit)"),
    ("host_override_unit", BASE + "hosts:\n  mobile: {cpus: 0.25, memory: 1Gb}\n",
     "6: hosts.mobile.memory: unknown unit 'Gb' (did you mean 'GB'?); allowed: B, KB, MB, GB, TB (powers of 1000), "
     "KiB, MiB, GiB, TiB (powers of 1024)"),
    ("host_override_unknown_host", BASE + "hosts:\n  phone: {cpus: 0.25}\n",
     "6: hosts.phone.cpus: unknown host 'phone'; allowed: hosts.<mobile|edge|cloud>.<cpus|memory|cpuset|cpu_period>, "
     "links.<mobile-edge|edge-cloud>[.forward|.reverse].<bandwidth|delay|jitter|loss|queue>"),
    ("host_override_not_a_mapping", BASE + "hosts:\n  mobile: 0.5\n",
     "6: hosts.mobile: expected a mapping, got a number; allowed: e.g. {cpus: 0.5, memory: 1GiB}"),
    ("link_override_range", BASE + "links:\n  edge-cloud:\n    bandwidth: 500Gbit\n",
     "7: links.edge-cloud.bandwidth: 500Gbit is out of range; allowed: 1kbit to 100Gbit, or unlimited"),
    ("link_override_written_backwards", BASE + "links:\n  edge-mobile:\n    delay: 1ms\n    jitter: 2ms\n",
     "8: links.edge-mobile.jitter: jitter 2ms is larger than the delay 1ms; allowed: 0ms to the delay (1ms)"),
    ("link_direction_not_a_mapping", BASE + "links:\n  edge-cloud:\n    reverse: 1Mbit\n",
     "7: links.edge-cloud.reverse: expected a mapping, got a string; allowed: e.g. {bandwidth: 10Mbit}"),
    ("source_unknown", BASE + "source: phone\n",
     "5: source: unknown host 'phone'; allowed: client, or a host of topology three_tier: mobile, edge, cloud"),
    ("requests_timeout_unit", BASE + "requests:\n  timeout: 5\n",
     "6: requests.timeout: '5' needs a unit, e.g. 5ms; allowed: a duration above 0 and at most 3600s, e.g. 120s"),
    ("requests_timeout_zero", BASE + "requests: {timeout: 0s}\n",
     "5: requests.timeout: 0ms is out of range; allowed: a duration above 0 and at most 3600s, e.g. 120s"),
    ("requests_repeat", BASE + "requests:\n  repeat: 0\n",
     "6: requests.repeat: 0 is out of range; allowed: a whole number 1 to 1000000"),
    ("requests_warmup_type", BASE + "requests:\n  warmup: 1.5\n",
     "6: requests.warmup: expected a whole number, got a number; allowed: a whole number 0 to 10000"),
    ("requests_key", BASE + "requests:\n  repeats: 3\n",
     "6: requests.repeats: unknown key; allowed: warmup, repeat, inputs, timeout, duration"),
    ("codec", BASE + "codec: grpc\n", "5: codec: 'grpc' is not a codec; allowed: binary | json-base64"),
    ("topology_missing_file", BASE + "topology: nope.yaml\n",
     "5: topology: {dir}/nope.yaml: no such topology file or built-in; allowed: a .yaml, .yml or .py file, "
     "or a built-in: three_tier, star, multi_edge"),
    ("topology_builtin_parameter", BASE + "topology: star:mobiles=0\n",
     "5: topology: <builtin star>: mobiles: 0 is out of range; allowed: 1 to 500"),
    ("topology_inline", BASE + "topology:\n  hosts:\n    edge: {cpus: lots}\n",
     "7: topology.hosts.edge.cpus: 'lots' is not a number of cores; allowed: a number of cores, e.g. 0.5, "
     "or unlimited"),
    ("not_yaml", "name: [t\n",
     "2: YAML syntax error: expected ',' or ']', but got '<stream end>' (column 1); allowed: valid YAML: "
     "a mapping with name, topology, models and strategies"),
    ("not_a_mapping", "- a\n- b\n",
     "1: expected a mapping, got a list; allowed: a mapping with the keys name, topology, hosts, links, models, "
     "strategies, source, requests, load, codec, serving, sweep"),
    ("empty_file", "",
     ": the file is empty; allowed: valid YAML: a mapping with name, topology, models and strategies"),
    ("duplicate_key", BASE + "name: u\n", "5: name: duplicate key (first at line 1); allowed: each key once"),
    ("sweep_not_sweepable", BASE + "sweep:\n  strategies[0].name: [a, b]\n",
     "6: sweep.strategies[0].name: not a path that can be swept; allowed: a path of --set other than name, sweep, "
     "models[.<i>[.name]] and strategies[.<i>[.name]]"),
    ("sweep_unknown_top_level", BASE + "sweep:\n  link.edge-cloud.delay: [1ms]\n",
     "6: sweep.link.edge-cloud.delay: not a path that can be swept; allowed: a path of --set other than name, sweep, "
     "models[.<i>[.name]] and strategies[.<i>[.name]]"),
    ("sweep_unknown_link", BASE + "sweep:\n  links.mobile-cloud.bandwidth: [1Mbit]\n",
     "6: sweep.links.mobile-cloud.bandwidth[0]: unknown link 'mobile-cloud'; allowed: "
     "hosts.<mobile|edge|cloud>.<cpus|memory|cpuset|cpu_period>, "
     "links.<mobile-edge|edge-cloud>[.forward|.reverse].<bandwidth|delay|jitter|loss|queue>"),
    ("sweep_bad_value", BASE + "sweep:\n  links.mobile-edge.bandwidth:\n    - 1Mbit\n    - 5Mbs\n",
     "8: sweep.links.mobile-edge.bandwidth[1]: unknown unit 'Mbs'; allowed: bit, kbit, Mbit, Gbit, Tbit "
     "(or bps, kbps, Mbps, Gbps, Tbps)"),
    ("sweep_value_breaks_another_field", BASE + "links: {mobile-edge: {delay: 10ms, jitter: 5ms}}\n"
                                                "sweep:\n  links.mobile-edge.delay: [10ms, 1ms]\n",
     "7: sweep.links.mobile-edge.delay[1]: with this value, links.mobile-edge.jitter: jitter 5ms is larger than the "
     "delay 1ms; allowed: 0ms to the delay (1ms)"),
    ("sweep_combination", BASE + "links: {mobile-edge: {delay: 10ms, jitter: 1ms}}\nsweep:\n"
                                 "  links.mobile-edge.delay: [10ms, 2ms]\n  links.mobile-edge.jitter: [1ms, 5ms]\n",
     "6: sweep: the combination links.mobile-edge.delay=2ms, links.mobile-edge.jitter=5ms fails: "
     "links.mobile-edge.jitter: jitter 5ms is larger than the delay 2ms; allowed: 0ms to the delay (2ms)"),
    ("sweep_placement_value", BASE + "sweep:\n  strategies.0.placement: [edge, [mobile, edge]]\n",
     "6: sweep.strategies.0.placement[1]: placement on 2 hosts needs a partition operator, "
     "e.g. operators: [{partition: {cut: auto}}]"),
    ("sweep_overlap", BASE + "sweep:\n  links.mobile-edge.delay: [1ms]\n  links.mobile-edge: [{delay: 2ms}]\n",
     "7: sweep.links.mobile-edge: overlaps the axis links.mobile-edge.delay; "
     "allowed: paths that do not contain one another"),
    ("sweep_value_twice", BASE + "sweep:\n  codec: [binary, binary]\n",
     "6: sweep.codec[1]: 'binary' is listed twice; allowed: each value once"),
    ("sweep_empty_list", BASE + "sweep:\n  codec: []\n",
     "6: sweep.codec: the list is empty; allowed: a list of values, e.g. [1Mbit, 10Mbit, 100Mbit]"),
    ("sweep_not_a_mapping", BASE + "sweep: [codec]\n",
     "5: sweep: expected a mapping, got a list; allowed: a mapping of paths to lists of values, "
     "e.g. {links.edge-cloud.bandwidth: [1Mbit, 10Mbit]}"),
    ("sweep_too_big", BASE + "sweep:\n  requests.repeat: [" + ", ".join(map(str, range(1, 102))) + "]\n"
                             "  requests.warmup: [" + ", ".join(map(str, range(0, 100))) + "]\n",
     "5: sweep: 10100 points; allowed: at most 10000 combinations"),
]


@pytest.mark.parametrize("text, tail", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_error_is_one_line_naming_file_line_and_field(tmp_path, text, tail):
    path = write(tmp_path, text)
    where = f"{path}:" if tail[0].isdigit() else str(path)  # tails start with the line, or ": " without one
    assert error(path) == f"{where}{tail}".replace("{dir}", str(tmp_path))


def test_missing_file(tmp_path):
    assert error(tmp_path / "nope.yaml") == (f"{tmp_path / 'nope.yaml'}: cannot read the file: No such file or "
                                             "directory; allowed: a readable YAML file")


def test_error_from_a_broken_topology_file_names_both_files(tmp_path):
    write(tmp_path, "hosts:\n  a: {cpus: -1}\n", "bad.yaml")
    path = write(tmp_path, BASE + "topology: bad.yaml\n")
    assert error(path) == (f"{path}:5: topology: {tmp_path / 'bad.yaml'}:2: hosts.a.cpus: -1 is out of range; "
                           "allowed: more than 0 and at most 1024 cores, or unlimited")


def test_error_survives_pickling():
    e = ExperimentError("bad", "good", source="x.yaml", line=3, path="codec")
    again = pickle.loads(pickle.dumps(e))
    assert str(again) == str(e) == "x.yaml:3: codec: bad; allowed: good"
    assert isinstance(again, ValueError)
