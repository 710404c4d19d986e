"""--set overrides: one or both directions, clearing limits, and re-validation."""
from __future__ import annotations

import pytest

from topologies import DirectionSpec, TopologyError, apply_overrides, load_topology, load_topology_dict

GiB = 1 << 30
PATHS = ("hosts.<mobile|edge|cloud>.<cpus|memory|cpuset|cpu_period>, "
         "links.<mobile-edge|edge-cloud>[.forward|.reverse].<bandwidth|delay|jitter|loss|queue>")


@pytest.fixture
def spec():
    return load_topology("three_tier", cores=2, memory_bytes=24 * GiB)


def message(spec, overrides) -> str:
    with pytest.raises(TopologyError) as info:
        apply_overrides(spec, overrides)
    return str(info.value)


def test_link_field_sets_both_directions(spec):
    link = apply_overrides(spec, {"links.mobile-edge.bandwidth": "50Mbit"}).link("mobile-edge")
    assert link.forward == link.reverse == DirectionSpec(rate_bps=50_000_000)


def test_link_may_be_named_the_other_way_round_for_both_directions(spec):
    link = apply_overrides(spec, [("links.edge-mobile.delay", "5ms")]).link("mobile-edge")
    assert link.forward.delay_ms == link.reverse.delay_ms == 5.0


def test_forward_and_reverse_set_one_direction_of_the_link_as_defined(spec):
    out = apply_overrides(spec, [("links.edge-cloud.forward.bandwidth", "2Mbit"),
                                 ("links.edge-cloud.reverse.loss", "1%")])
    link = out.link("edge-cloud")
    assert link.forward == DirectionSpec(rate_bps=2_000_000)
    assert link.reverse == DirectionSpec(rate_bps=1_000_000, loss=0.01)
    assert out.link("mobile-edge") == spec.link("mobile-edge")


def test_overrides_apply_in_order(spec):
    out = apply_overrides(spec, [("links.mobile-edge.delay", "5ms"), ("links.mobile-edge.forward.delay", "7ms")])
    assert (out.link("mobile-edge").forward.delay_ms, out.link("mobile-edge").reverse.delay_ms) == (7.0, 5.0)


def test_host_fields_are_parsed_like_yaml(spec):
    host = apply_overrides(spec, {"hosts.edge.cpus": "1.5", "hosts.edge.memory": "2GiB",
                                  "hosts.edge.cpuset": "0-1"}).host("edge")
    assert (host.cpus, host.memory_bytes, host.cpuset) == (1.5, 2 * GiB, (0, 1))


@pytest.mark.parametrize("path, value, attr", [
    ("hosts.mobile.cpus", "none", "cpus"), ("hosts.mobile.cpus", "unlimited", "cpus"),
    ("hosts.mobile.memory", "unlimited", "memory_bytes"), ("hosts.mobile.memory", "none", "memory_bytes"),
])
def test_none_or_unlimited_clears_a_host_limit(spec, path, value, attr):
    assert getattr(apply_overrides(spec, {path: value}).host("mobile"), attr) is None


def test_unlimited_bandwidth_unshapes_the_link_and_auto_resets_the_queue(spec):
    out = apply_overrides(spec, {"links.edge-cloud.queue": "64KiB"})
    assert out.link("edge-cloud").forward.queue_bytes == 65536
    out = apply_overrides(out, {"links.edge-cloud.bandwidth": "unlimited", "links.edge-cloud.queue": "auto"})
    assert out.link("edge-cloud").forward == out.link("edge-cloud").reverse == DirectionSpec()


def test_overrides_leave_the_original_spec_alone(spec):
    before = spec.to_dict()
    apply_overrides(spec, {"hosts.mobile.cpus": "1"})
    assert spec.to_dict() == before


def test_overridden_spec_keeps_its_source_and_round_trips(spec):
    out = apply_overrides(spec, {"links.mobile-edge.forward.jitter": "1ms", "links.mobile-edge.forward.delay": "2ms"})
    assert out.source == "<builtin three_tier>"
    assert load_topology_dict(out.to_dict()) == out


@pytest.mark.parametrize("overrides, expected", [
    ({"hosts.phone.cpus": "1"}, f"--set: hosts.phone.cpus: unknown host 'phone'; allowed: {PATHS}"),
    ({"hosts.mobile.cpu": "1"}, f"--set: hosts.mobile.cpu: unknown field 'cpu'; allowed: {PATHS}"),
    ({"links.mobile-cloud.delay": "1ms"},
     f"--set: links.mobile-cloud.delay: unknown link 'mobile-cloud'; allowed: {PATHS}"),
    ({"links.mobile-edge.rate": "1Mbit"}, f"--set: links.mobile-edge.rate: unknown field 'rate'; allowed: {PATHS}"),
    ({"links.mobile-edge.up.delay": "1ms"},
     f"--set: links.mobile-edge.up.delay: unknown direction 'up'; allowed: {PATHS}"),
    ({"mobile.cpus": "1"}, f"--set: mobile.cpus: unknown path; allowed: {PATHS}"),
    ({"hosts.mobile": "1"}, f"--set: hosts.mobile: unknown path; allowed: {PATHS}"),
    ({"links.edge-mobile.forward.delay": "1ms"},
     "--set: links.edge-mobile.forward.delay: forward/reverse are relative to the link as defined, mobile-edge; "
     "allowed: links.mobile-edge.forward.delay"),
])
def test_unknown_paths_list_the_valid_ones(spec, overrides, expected):
    assert message(spec, overrides) == expected


def test_long_host_lists_are_shortened_in_the_valid_paths():
    star = load_topology("star:mobiles=50", cores=2, memory_bytes=24 * GiB)
    assert message(star, {"hosts.mobile51.cpus": "1"}) == (
        "--set: hosts.mobile51.cpus: unknown host 'mobile51'; allowed: "
        "hosts.<mobile1|mobile2|mobile3|mobile4|mobile5|mobile6|mobile7|mobile8|...(52 in all)>.<cpus|memory|cpuset|cpu_period>, "
        "links.<mobile1-edge|mobile2-edge|mobile3-edge|mobile4-edge|mobile5-edge|mobile6-edge|mobile7-edge|"
        "mobile8-edge|...(51 in all)>[.forward|.reverse].<bandwidth|delay|jitter|loss|queue>")


@pytest.mark.parametrize("overrides, expected", [
    ({"links.mobile-edge.jitter": "10ms"},
     "--set: links.mobile-edge.jitter: jitter 10ms is larger than the delay 0ms; allowed: 0ms to the delay (0ms)"),
    ([("links.mobile-edge.delay", "5ms"), ("links.mobile-edge.reverse.jitter", "6ms")],
     "--set: links.mobile-edge.reverse.jitter: jitter 6ms is larger than the delay 5ms; allowed: 0ms to the delay (5ms)"),
    ([("links.mobile-edge.delay", "5ms"), ("links.mobile-edge.jitter", "2ms"), ("links.mobile-edge.forward.delay", "1ms")],
     "--set: links.mobile-edge.forward.delay: jitter 2ms is larger than the delay 1ms; allowed: 0ms to the delay (1ms)"),
    ({"hosts.cloud.cpus": "2000"},
     "--set: hosts.cloud.cpus: 2000 is out of range; allowed: more than 0 and at most 1024 cores, or unlimited"),
    ({"links.edge-cloud.forward.bandwidth": "500Gbit"},
     "--set: links.edge-cloud.forward.bandwidth: 500Gbit is out of range; allowed: 1kbit to 100Gbit, or unlimited"),
    ({"links.edge-cloud.loss": "100%"},
     "--set: links.edge-cloud.loss: 100% is out of range; allowed: 0% up to but not including 100%"),
])
def test_result_is_validated_again_and_blames_the_override(spec, overrides, expected):
    assert message(spec, overrides) == expected


@pytest.mark.parametrize("overrides, expected", [
    ({"links.mobile-edge.bandwidth": "50"},
     "--set: links.mobile-edge.bandwidth: '50' needs a unit, e.g. 50Mbit; "
     "allowed: bit, kbit, Mbit, Gbit, Tbit (or bps, kbps, Mbps, Gbps, Tbps)"),
    ({"hosts.mobile.cpus": "half"},
     "--set: hosts.mobile.cpus: 'half' is not a number of cores; allowed: a number of cores, e.g. 0.5, or unlimited"),
    ({"links.mobile-edge.delay": "1 fortnight"},
     "--set: links.mobile-edge.delay: unknown unit 'fortnight'; allowed: us, ms, s"),
])
def test_unparseable_values_name_the_path_as_written(spec, overrides, expected):
    assert message(spec, overrides) == expected


def test_custom_source_names_the_origin_of_overrides(spec):
    with pytest.raises(TopologyError) as info:
        apply_overrides(spec, {"hosts.mobile.cpus": "0"}, source="sweep.yaml")
    assert str(info.value).startswith("sweep.yaml: hosts.mobile.cpus: 0 is out of range")


def test_no_overrides_return_an_equal_spec(spec):
    assert apply_overrides(spec, {}) == spec
