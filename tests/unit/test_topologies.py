"""Topology specs: loading good YAML and Python files, the spec API, and round trips."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import topologies
from topologies import (BUILTINS, DirectionSpec, HostSpec, LinkSpec, TopologyError, TopologySpec, load_topology,
                        load_topology_dict, validate)

GiB, MiB = 1 << 30, 1 << 20
DOC_EXAMPLE = """\
name: my-topology
hosts:
  mobile: {cpus: 0.25, memory: 1GiB}
  edge:   {cpus: 0.5, memory: 4GiB, cpuset: "0-1"}
  cloud:  {}                      # unlimited
links:
  mobile-edge: {bandwidth: 200Mbit, delay: 5ms, jitter: 1ms, loss: 0.1%, queue: 256KiB}
  edge-cloud:
    bandwidth: 1Mbit
    reverse: {bandwidth: 10Mbit}  # per-direction overrides: forward (a->b) / reverse (b->a)
"""


def load(ref, cores=2, memory_bytes=24 * GiB) -> TopologySpec:
    return load_topology(str(ref), cores=cores, memory_bytes=memory_bytes)


@pytest.fixture
def example(tmp_path) -> TopologySpec:
    path = tmp_path / "example.yaml"
    path.write_text(DOC_EXAMPLE)
    return load(path)


def test_documented_example_loads_to_the_values_it_says(example, tmp_path):
    assert example.name == "my-topology"
    assert example.source == str(tmp_path / "example.yaml")
    assert example.hosts == (HostSpec("mobile", 0.25, GiB), HostSpec("edge", 0.5, 4 * GiB, (0, 1)), HostSpec("cloud"))
    me = DirectionSpec(rate_bps=200_000_000, delay_ms=5.0, jitter_ms=1.0, loss=0.001, queue_bytes=256 * 1024)
    assert example.link("mobile-edge") == LinkSpec("mobile", "edge", me, me)
    assert example.link("edge-cloud").forward == DirectionSpec(rate_bps=1_000_000)
    assert example.link("edge-cloud").reverse == DirectionSpec(rate_bps=10_000_000)


def test_loader_docstring_carries_the_yaml_shape():
    doc = topologies.loader.__doc__
    for key in ("name:", "hosts:", "links:", "cpus", "memory", "cpuset", "bandwidth", "delay", "jitter", "loss",
                "queue", "forward", "reverse"):
        assert key in doc


def test_name_defaults_to_the_file_stem(tmp_path):
    path = tmp_path / "lab_2.yml"
    path.write_text("hosts:\n  solo: {cpus: 1}\n")
    spec = load(path)
    assert spec.name == "lab_2"
    assert spec.links == ()


def test_empty_host_and_link_values_mean_unlimited_and_unshaped(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("hosts:\n  a:\n  b: {cpus: unlimited, memory: none}\nlinks:\n  a-b:\n")
    spec = load(path)
    assert spec.hosts == (HostSpec("a"), HostSpec("b"))
    assert spec.links == (LinkSpec("a", "b", DirectionSpec(), DirectionSpec()),)


def test_yaml_keys_are_taken_as_written_not_as_booleans(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("hosts:\n  no: {}\n  yes: {}\nlinks:\n  no-yes: {}\n")
    assert load(path).host_names == ("no", "yes")


def test_direction_override_applies_only_to_that_direction(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("hosts: {a: {}, b: {}}\nlinks:\n  a-b:\n    delay: 10ms\n    forward: {delay: 2ms, loss: 1%}\n")
    link = load(path).link("a-b")
    assert link.forward == DirectionSpec(delay_ms=2.0, loss=0.01)
    assert link.reverse == DirectionSpec(delay_ms=10.0)


def test_yaml_aliases_are_followed(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("hosts:\n  a: &small {cpus: 0.5, memory: 1GiB}\n  b: *small\nlinks:\n  a-b: {}\n")
    assert load(path).host("b") == HostSpec("b", 0.5, GiB)


def test_recursive_yaml_is_refused_not_followed_forever(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("hosts: &h\n  a: *h\n")
    with pytest.raises(TopologyError, match="nested too deeply or too large"):
        load(path)


def test_python_file_may_return_a_dict_and_use_the_budget(tmp_path):
    path = tmp_path / "scaled.py"
    path.write_text(textwrap.dedent("""\
        def topology(cores, memory_bytes):
            return {"hosts": {"a": {"cpus": cores / 2, "memory": f"{memory_bytes // 2**30}GiB"}, "b": {}},
                    "links": {"a-b": {"bandwidth": "5Mbit"}}}
        """))
    spec = load(path, cores=4, memory_bytes=8 * GiB)
    assert spec.name == "scaled"
    assert spec.host("a") == HostSpec("a", 2.0, 8 * GiB)
    assert spec.source == str(path)


def test_python_file_may_return_a_spec_from_a_named_function(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(textwrap.dedent("""\
        from topologies import BUILTINS

        def topology():
            raise AssertionError("not this one")

        def bigger():
            return BUILTINS["star"](8, 16 * 2**30, mobiles=3)
        """))
    spec = load(f"{path}:bigger")
    assert spec.name == "star"
    assert len(spec.hosts) == 5


def test_python_file_leaves_no_module_behind(tmp_path):
    path = tmp_path / "t.py"
    path.write_text("def topology():\n    return {'hosts': {'a': {}}}\n")
    before = set(sys.modules)
    load(path)
    assert set(sys.modules) == before


def test_lookups_raise_topology_errors_not_key_errors(example):
    with pytest.raises(TopologyError) as info:
        example.host("phone")
    assert str(info.value).endswith("hosts.phone: unknown host 'phone'; allowed: hosts mobile, edge, cloud")
    with pytest.raises(TopologyError) as info:
        example.link("mobile-cloud")
    assert str(info.value).endswith("links.mobile-cloud: unknown link 'mobile-cloud'; "
                                    "allowed: links mobile-edge, edge-cloud")


def test_link_lookup_accepts_either_order_and_keeps_the_definition(example):
    link = example.link("cloud-edge")
    assert link.name == "edge-cloud"
    assert link.direction("cloud", "edge") == link.reverse
    assert link.direction("edge", "cloud") == link.forward


def test_direction_for_non_endpoints_is_an_error(example):
    with pytest.raises(TopologyError) as info:
        example.link("edge-cloud").direction("mobile", "cloud")
    assert str(info.value) == "links.edge-cloud: no direction mobile->cloud; allowed: edge->cloud, cloud->edge"


def test_impaired_means_delay_jitter_or_loss(example):
    assert example.link("mobile-edge").impaired
    assert not example.link("edge-cloud").impaired
    assert not DirectionSpec(rate_bps=1000).impaired
    assert DirectionSpec(loss=0.01).impaired
    assert LinkSpec("a", "b", DirectionSpec(), DirectionSpec(jitter_ms=1.0)).impaired


def test_neighbours_are_sorted(example):
    assert example.neighbours("edge") == ("cloud", "mobile")
    assert example.neighbours("mobile") == ("edge",)


def test_path_takes_the_fewest_hops_and_breaks_ties_by_name():
    d = DirectionSpec()
    # a square a-b-d and a-c-d: both two hops; b sorts before c
    spec = validate(TopologySpec("sq", tuple(HostSpec(n) for n in "dcba"),
                                 (LinkSpec("a", "c", d, d), LinkSpec("c", "d", d, d), LinkSpec("b", "d", d, d),
                                  LinkSpec("a", "b", d, d), LinkSpec("a", "d", d, d))))
    assert spec.path("a", "d") == ["a", "d"]
    reordered = TopologySpec("sq", spec.hosts, spec.links[:4])
    assert reordered.path("a", "d") == ["a", "b", "d"]
    assert TopologySpec("sq", spec.hosts, tuple(reversed(spec.links[:4]))).path("a", "d") == ["a", "b", "d"]
    assert reordered.path("c", "c") == ["c"]


def test_path_to_an_unknown_host_is_an_error(example):
    with pytest.raises(TopologyError, match="unknown host 'phone'"):
        example.path("mobile", "phone")


def test_specs_are_frozen_and_hashable(example):
    with pytest.raises(AttributeError):
        example.name = "other"  # type: ignore[misc]
    assert hash(example) == hash(load_topology_dict(example.to_dict()))


def test_constructors_turn_lists_into_tuples():
    spec = TopologySpec("t", [HostSpec("a", cpuset=[1, 0])], [])
    assert spec.hosts == (HostSpec("a", cpuset=(1, 0)),)
    assert isinstance(spec.links, tuple)


def test_source_does_not_take_part_in_equality(example):
    assert load_topology_dict(example.to_dict(), source="elsewhere") == example


def test_to_dict_writes_shared_values_once_and_differences_per_direction(example):
    assert example.to_dict() == {
        "name": "my-topology",
        "hosts": {"mobile": {"cpus": 0.25, "memory": "1GiB"}, "edge": {"cpus": 0.5, "memory": "4GiB", "cpuset": "0-1"},
                  "cloud": {}},
        "links": {"mobile-edge": {"bandwidth": "200Mbit", "delay": "5ms", "jitter": "1ms", "loss": "0.1%",
                                  "queue": "256KiB"},
                  "edge-cloud": {"forward": {"bandwidth": "1Mbit"}, "reverse": {"bandwidth": "10Mbit"}}},
    }


def test_to_dict_round_trips_an_unshaped_direction_and_odd_values():
    spec = validate(TopologySpec("odd", (HostSpec("a", 0.333, 16 * MiB + 4096), HostSpec("b", cpuset=(0, 2, 3))),
                                 (LinkSpec("a", "b", DirectionSpec(rate_bps=1_234_567, delay_ms=0.125, jitter_ms=0.1,
                                                                   loss=0.000123, queue_bytes=1514),
                                           DirectionSpec(delay_ms=59_999.999)),)))
    assert load_topology_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("name", sorted(BUILTINS))
@pytest.mark.parametrize("cores, memory", [(2, 24 * GiB), (16, 64 * GiB), (3, 7 * GiB + 12345)])
def test_every_builtin_round_trips_through_to_dict(name, cores, memory):
    spec = load(name, cores=cores, memory_bytes=memory)
    assert load_topology_dict(spec.to_dict()) == spec


def test_to_dict_round_trips_through_yaml_text(example, tmp_path):
    import yaml

    path = tmp_path / "again.yaml"
    path.write_text(yaml.safe_dump(example.to_dict(), sort_keys=False))
    assert load(path) == example


def test_describe_gives_a_row_per_host_and_link_direction(example):
    rows = example.describe()
    assert [r["kind"] for r in rows] == ["host"] * 3 + ["link"] * 4
    assert rows[0] == {"kind": "host", "name": "mobile", "cpus": "0.25", "memory": "1GiB", "cpuset": "none",
                       "cpu_period": "auto"}
    assert rows[6] == {"kind": "link", "name": "edge-cloud", "direction": "cloud->edge", "bandwidth": "10Mbit",
                       "delay": "0ms", "jitter": "0ms", "loss": "0%", "queue": "auto"}


def test_validate_returns_the_spec_it_was_given(example):
    assert validate(example) is example


@pytest.mark.parametrize("spec, expected", [
    (TopologySpec("t", (), ()), "<memory>: hosts: no hosts; allowed: at least one host, "
                                "e.g. {mobile: {cpus: 0.5, memory: 1GiB}}"),
    (TopologySpec("t", (HostSpec("a", cpus="1"),), ()),  # type: ignore[arg-type]
     "<memory>: hosts.a.cpus: expected a number, got '1'; allowed: a number of cores, e.g. 0.5, or unlimited"),
    (TopologySpec("t", (HostSpec("a"), HostSpec("b")), (LinkSpec("a", "b", DirectionSpec(rate_bps=10), DirectionSpec()),)),
     "<memory>: links.a-b.forward.bandwidth: 10bit is out of range; allowed: 1kbit to 100Gbit, or unlimited"),
    (TopologySpec("t", (HostSpec("a"), HostSpec("b")), (LinkSpec("a", "b", DirectionSpec(loss=-0.1),
                                                                  DirectionSpec(loss=-0.1)),)),
     "<memory>: links.a-b.loss: -10% is out of range; allowed: 0% up to but not including 100%"),
    (TopologySpec("t", (HostSpec("a", cpuset=()),), ()),
     "<memory>: hosts.a.cpuset: empty CPU list; allowed: CPU numbers 0 to 8191 and ranges, e.g. 0-3,5, "
     "or a list of numbers"),
    (TopologySpec("t", ("a",), ()),  # type: ignore[arg-type]
     "<memory>: hosts[0]: expected a HostSpec, got str; allowed: HostSpec(name, ...)"),
])
def test_validate_checks_specs_built_in_python(spec, expected):
    with pytest.raises(TopologyError) as info:
        validate(spec)
    assert str(info.value) == expected


def test_topology_error_is_a_value_error_that_pickles():
    import pickle

    e = TopologyError("bad", "good", source="f.yaml", line=3, path="hosts.a")
    assert isinstance(e, ValueError)
    again = pickle.loads(pickle.dumps(e))
    assert str(again) == str(e) == "f.yaml:3: hosts.a: bad; allowed: good"


def test_importing_the_package_needs_neither_mininet_nor_yaml():
    code = "import sys, topologies; print(sorted(m for m in ('mininet', 'yaml') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"
