"""Built-in topologies: the studies' CPU and memory ratios scaled to the machine's budget."""
from __future__ import annotations

import pytest

from topologies import BUILTINS, DirectionSpec, HostSpec, TopologyError, budget_units, load_topology, validate

GiB, MiB = 1 << 30, 1 << 20


def load(ref: str, cores: float = 2, memory_bytes: int = 24 * GiB):
    return load_topology(ref, cores=cores, memory_bytes=memory_bytes)


def test_three_tier_on_2_cores_and_24GiB_keeps_the_studies_ratios():
    spec = load("three_tier")
    assert spec.name == "three_tier"
    assert spec.source == "<builtin three_tier>"
    assert spec.hosts == (HostSpec("mobile", 0.25, 768 * MiB), HostSpec("edge", 0.5, 3 * GiB),
                          HostSpec("cloud", 1.0, 12 * GiB))
    assert [(l.name, l.forward, l.reverse) for l in spec.links] == [
        ("mobile-edge", DirectionSpec(rate_bps=200_000_000), DirectionSpec(rate_bps=200_000_000)),
        ("edge-cloud", DirectionSpec(rate_bps=1_000_000), DirectionSpec(rate_bps=1_000_000)),
    ]


def test_three_tier_on_16_cores_scales_cpus_by_the_same_ratios():
    spec = load("three_tier", cores=16, memory_bytes=64 * GiB)
    assert [(h.cpus, h.memory_bytes) for h in spec.hosts] == [(2.0, 2 * GiB), (4.0, 8 * GiB), (8.0, 32 * GiB)]


@pytest.mark.parametrize("cores, memory, u, m", [
    (2, 24 * GiB, 0.25, 768 * MiB),
    (16, 64 * GiB, 2.0, 2 * GiB),
    (3, 24 * GiB, 0.375, 768 * MiB),
    (1.7, 10 * GiB, 0.212, 320 * MiB),     # 10GiB/32 = 320MiB, already a multiple of 64MiB
    (2, 7 * GiB, 0.25, 192 * MiB),         # 224MiB rounded down to a multiple of 64MiB
    (0.001, 1 * GiB, 0.001, 128 * MiB),    # floors: a thousandth of a core, 128MiB
])
def test_budget_units_round_as_documented(cores, memory, u, m):
    assert budget_units(cores, memory) == (u, m)


def test_fractional_budget_keeps_exact_cpu_ratios():
    spec = load("three_tier", cores=1.7, memory_bytes=10 * GiB)
    assert [h.cpus for h in spec.hosts] == [0.212, 0.424, 0.848]


@pytest.mark.parametrize("cores, memory", [(0, GiB), (-1, GiB), (float("nan"), GiB), (2, 0), (2, 1.5)])
def test_unusable_budgets_are_refused(cores, memory):
    with pytest.raises(TopologyError, match=r"^<builtin three_tier>: (cores|memory_bytes): "):
        load("three_tier", cores=cores, memory_bytes=memory)


def test_star_default_has_four_mobiles_around_one_edge():
    spec = load("star")
    assert spec.name == "star"
    assert spec.host_names == ("mobile1", "mobile2", "mobile3", "mobile4", "edge", "cloud")
    assert spec.neighbours("edge") == ("cloud", "mobile1", "mobile2", "mobile3", "mobile4")


def test_star_with_50_mobiles_is_connected_and_shaped_like_the_studies():
    spec = load("star:mobiles=50")
    assert len(spec.hosts) == 52 and len(spec.links) == 51
    assert spec.host("mobile50") == HostSpec("mobile50", 0.25, 768 * MiB)
    assert spec.link("mobile37-edge").forward.rate_bps == 200_000_000
    assert spec.path("mobile1", "mobile50") == ["mobile1", "edge", "mobile50"]
    assert spec.path("mobile50", "cloud") == ["mobile50", "edge", "cloud"]
    assert all(len(spec.path("cloud", h)) <= 3 for h in spec.host_names)


def test_star_accepts_the_largest_allowed_size():
    assert len(load("star:mobiles=500").hosts) == 502


def test_multi_edge_shape():
    spec = load("multi_edge:edges=3,mobiles_per_edge=2")
    assert spec.name == "multi_edge"
    assert spec.host_names == ("mobile1_1", "mobile1_2", "mobile2_1", "mobile2_2", "mobile3_1", "mobile3_2",
                               "edge1", "edge2", "edge3", "cloud")
    assert [l.name for l in spec.links] == ["mobile1_1-edge1", "mobile1_2-edge1", "mobile2_1-edge2",
                                            "mobile2_2-edge2", "mobile3_1-edge3", "mobile3_2-edge3",
                                            "edge1-cloud", "edge2-cloud", "edge3-cloud"]
    assert spec.host("edge2") == HostSpec("edge2", 0.5, 3 * GiB)
    assert spec.link("edge3-cloud").reverse.rate_bps == 1_000_000
    assert spec.path("mobile1_2", "mobile3_1") == ["mobile1_2", "edge1", "cloud", "edge3", "mobile3_1"]
    assert spec.path("mobile2_1", "mobile2_2") == ["mobile2_1", "edge2", "mobile2_2"]


def test_multi_edge_defaults_to_two_edges_with_two_mobiles():
    assert len(load("multi_edge").hosts) == 2 * 2 + 2 + 1


def test_three_tier_path_from_mobile_to_cloud_goes_through_the_edge():
    spec = load("three_tier")
    assert spec.path("mobile", "cloud") == ["mobile", "edge", "cloud"]
    assert spec.path("cloud", "mobile") == ["cloud", "edge", "mobile"]


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtins_are_valid_and_pure(name):
    a = BUILTINS[name](4, 16 * GiB)
    assert validate(a) is a
    assert BUILTINS[name](4, 16 * GiB) == a


def test_builtin_functions_check_parameters_given_from_python():
    with pytest.raises(TopologyError) as info:
        BUILTINS["star"](2, 8 * GiB, mobiles=True)
    assert str(info.value) == "<builtin star>: mobiles: True is not a whole number; allowed: 1 to 500"
