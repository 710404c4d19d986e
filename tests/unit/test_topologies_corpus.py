"""A corpus of broken topologies, each with the exact one-line message it must produce.

The messages are the user interface of a topology mistake, so they are pinned whole: file,
line, field path, problem and what is allowed.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from topologies import TopologyError, load_topology

RATE_UNITS = "bit, kbit, Mbit, Gbit, Tbit (or bps, kbps, Mbps, Gbps, Tbps)"
SIZE_UNITS = "B, KB, MB, GB, TB (powers of 1000), KiB, MiB, GiB, TiB (powers of 1024)"
HOST_NAMES = "a lowercase letter, then up to 23 lowercase letters, digits or '_' (no '-': link names use it)"
REFS = "a .yaml, .yml or .py file, or a built-in: three_tier, star, multi_edge"
SYNTAX = "valid YAML: a mapping with name, hosts and links"
PYTHON = "a function returning a TopologySpec or a dict in the YAML shape"
TWO = "hosts:\n  mobile: {}\n  edge: {}\n"  # two hosts, for link cases

# (case id, file text, expected message with {f} for the file's path)
CORPUS = [
    ("unknown_top_level_key", "hosts:\n  mobile: {}\nlink: {}\n",
     "{f}:3: link: unknown key; allowed: name, hosts, links"),
    ("unknown_host_key", "hosts:\n  mobile: {cpu: 1}\n",
     "{f}:2: hosts.mobile.cpu: unknown key; allowed: cpus, memory, cpuset, cpu_period"),
    ("cpu_period_out_of_range", "hosts:\n  mobile: {cpus: 0.5, cpu_period: 2s}\n",
     "{f}:2: hosts.mobile.cpu_period: 2s is out of range; allowed: a duration from 1ms to 1s, e.g. 100ms "
     "(the kernel's default), or auto (a 1ms quota: 4ms at 0.25 cores)"),
    ("cpu_period_bare_number", "hosts:\n  mobile: {cpu_period: 10}\n",
     "{f}:2: hosts.mobile.cpu_period: expected a duration, got a number; allowed: a duration from 1ms to 1s, "
     "e.g. 100ms (the kernel's default), or auto (a 1ms quota: 4ms at 0.25 cores)"),
    ("cpu_quota_under_the_kernels_floor", "hosts:\n  mobile: {cpus: 0.05, cpu_period: 10ms}\n",
     "{f}:2: hosts.mobile.cpus: 0.05 cores over a 10ms cpu_period is a 500us quota, under the kernel's 1ms "
     "minimum; allowed: at least 0.1 cores, or a longer cpu_period"),
    ("cpu_quota_under_the_floor_at_the_auto_period", "hosts:\n  mobile: {cpus: 0.0005}\n",
     "{f}:2: hosts.mobile.cpus: 0.0005 cores over a 1s cpu_period is a 500us quota, under the kernel's 1ms "
     "minimum; allowed: at least 0.001 cores, or a longer cpu_period"),
    ("unknown_link_key", TWO + "links:\n  mobile-edge: {bw: 1Mbit}\n",
     "{f}:5: links.mobile-edge.bw: unknown key; allowed: bandwidth, delay, jitter, loss, queue, forward, reverse"),
    ("unknown_direction_key", TWO + "links:\n  mobile-edge:\n    forward: {rate: 1Mbit}\n",
     "{f}:6: links.mobile-edge.forward.rate: unknown key; allowed: bandwidth, delay, jitter, loss, queue"),
    ("unknown_unit", TWO + "links:\n  mobile-edge:\n    bandwidth: 1Mbs\n",
     "{f}:6: links.mobile-edge.bandwidth: unknown unit 'Mbs'; allowed: " + RATE_UNITS),
    ("bare_number_bandwidth", TWO + "links:\n  mobile-edge: {bandwidth: 200}\n",
     "{f}:5: links.mobile-edge.bandwidth: '200' needs a unit, e.g. 200Mbit; allowed: " + RATE_UNITS),
    ("bare_number_memory", "hosts:\n  mobile: {memory: 512}\n",
     "{f}:2: hosts.mobile.memory: '512' needs a unit, e.g. 512MiB; allowed: " + SIZE_UNITS),
    ("bare_number_delay", TWO + "links:\n  mobile-edge: {delay: 5}\n",
     "{f}:5: links.mobile-edge.delay: '5' needs a unit, e.g. 5ms; allowed: us, ms, s"),
    ("bytes_per_second", TWO + "links:\n  mobile-edge: {bandwidth: 10MB/s}\n",
     "{f}:5: links.mobile-edge.bandwidth: '10MB/s' is in bytes per second, rates are in bits: write 80Mbit; "
     "allowed: " + RATE_UNITS),
    ("duplicate_host_name", "hosts:\n  mobile: {cpus: 1}\n  edge: {}\n  mobile: {}\n",
     "{f}:4: hosts.mobile: duplicate host name (first at line 2); allowed: each host name once"),
    ("duplicate_key_in_host", "hosts:\n  mobile:\n    cpus: 1\n    cpus: 2\n",
     "{f}:4: hosts.mobile.cpus: duplicate key (first at line 3); allowed: each key once"),
    ("duplicate_link_both_ways", TWO + "links:\n  mobile-edge: {}\n  edge-mobile: {}\n",
     "{f}:6: links.edge-mobile: duplicate of link mobile-edge; "
     "allowed: one link per pair of hosts (forward/reverse set each direction)"),
    ("duplicate_link_same_way", TWO + "links:\n  mobile-edge: {}\n  mobile-edge: {delay: 1ms}\n",
     "{f}:6: links.mobile-edge: duplicate link (first at line 5); allowed: each link once"),
    ("dangling_endpoint", TWO + "links:\n  mobile-edge: {}\n  edge-cloud: {}\n",
     "{f}:6: links.edge-cloud: unknown host 'cloud'; allowed: hosts mobile, edge"),
    ("self_link", TWO + "links:\n  mobile-edge: {}\n  edge-edge: {}\n",
     "{f}:6: links.edge-edge: links a host to itself; allowed: two different hosts"),
    ("link_name_without_dash", TWO + "links:\n  mobile_edge: {}\n",
     "{f}:5: links.mobile_edge: not two host names joined by '-'; allowed: e.g. mobile-edge"),
    ("disconnected_graph", "hosts:\n  mobile: {}\n  edge: {}\n  cloud: {}\n  spare: {}\nlinks:\n  mobile-edge: {}\n",
     "{f}:6: links: hosts cloud, spare cannot be reached from mobile; allowed: a connected graph: add links that "
     "reach them"),
    ("two_hosts_without_links", TWO,
     "{f}: links: host edge cannot be reached from mobile; allowed: a connected graph: add links that reach them"),
    ("negative_cpus", "hosts:\n  mobile: {cpus: -1}\n",
     "{f}:2: hosts.mobile.cpus: -1 is out of range; allowed: more than 0 and at most 1024 cores, or unlimited"),
    ("zero_cpus", "hosts:\n  mobile: {cpus: 0}\n",
     "{f}:2: hosts.mobile.cpus: 0 is out of range; allowed: more than 0 and at most 1024 cores, or unlimited"),
    ("cpus_as_boolean", "hosts:\n  mobile: {cpus: yes}\n",
     "{f}:2: hosts.mobile.cpus: expected a number of cores, got a boolean (true); "
     "allowed: a number of cores, e.g. 0.5, or unlimited"),
    ("tiny_memory", "hosts:\n  mobile: {memory: 1MiB}\n",
     "{f}:2: hosts.mobile.memory: 1MiB is out of range; allowed: 16MiB to 64TiB, or unlimited"),
    ("absurd_bandwidth", TWO + "links:\n  mobile-edge: {bandwidth: 1000Tbit}\n",
     "{f}:5: links.mobile-edge.bandwidth: 1000Tbit is out of range; allowed: 1kbit to 100Gbit, or unlimited"),
    ("negative_delay", TWO + "links:\n  mobile-edge: {delay: -5ms}\n",
     "{f}:5: links.mobile-edge.delay: -5ms is out of range; allowed: 0ms to 60s"),
    ("jitter_above_delay", TWO + "links:\n  mobile-edge:\n    delay: 5ms\n    jitter: 10ms\n",
     "{f}:7: links.mobile-edge.jitter: jitter 10ms is larger than the delay 5ms; allowed: 0ms to the delay (5ms)"),
    ("jitter_above_one_directions_delay",
     TWO + "links:\n  mobile-edge:\n    delay: 5ms\n    jitter: 2ms\n    reverse: {delay: 1ms}\n",
     "{f}:8: links.mobile-edge.reverse.delay: jitter 2ms is larger than the delay 1ms; "
     "allowed: 0ms to the delay (1ms)"),
    ("loss_of_100_percent", TWO + "links:\n  mobile-edge: {loss: 100%}\n",
     "{f}:5: links.mobile-edge.loss: 100% is out of range; allowed: 0% up to but not including 100%"),
    ("loss_without_percent", TWO + "links:\n  mobile-edge: {loss: 0.01}\n",
     "{f}:5: links.mobile-edge.loss: '0.01' needs a unit, e.g. 0.01%; allowed: % (a percentage, e.g. 0.1%)"),
    ("queue_below_a_frame", TWO + "links:\n  mobile-edge: {queue: 100B}\n",
     "{f}:5: links.mobile-edge.queue: 100B is out of range; allowed: 1514B (one full frame) to 1GiB, or auto"),
    ("bad_cpuset", "hosts:\n  mobile: {cpuset: 3-1}\n",
     "{f}:2: hosts.mobile.cpuset: '3-1' is a backwards range; "
     "allowed: CPU numbers 0 to 8191 and ranges, e.g. 0-3,5, or a list of numbers"),
    ("negative_cpu_in_cpuset", "hosts:\n  mobile: {cpuset: [0, -2]}\n",
     "{f}:2: hosts.mobile.cpuset: CPU -2 is out of range; "
     "allowed: CPU numbers 0 to 8191 and ranges, e.g. 0-3,5, or a list of numbers"),
    ("bad_host_name", "hosts:\n  Mobile-1: {}\n",
     "{f}:2: hosts.Mobile-1: invalid host name; allowed: " + HOST_NAMES),
    ("host_name_too_long", "hosts:\n  " + "m" * 25 + ": {}\n",
     "{f}:2: hosts." + "m" * 25 + ": invalid host name; allowed: " + HOST_NAMES),
    ("hosts_as_list", "hosts: [mobile, edge]\n",
     "{f}:1: hosts: expected a mapping, got a list; allowed: a mapping of host names to limits, "
     "e.g. {{mobile: {{cpus: 0.5}}}}"),
    ("host_as_scalar", "hosts:\n  mobile: big\n",
     "{f}:2: hosts.mobile: expected a mapping, got a string; allowed: e.g. {{cpus: 0.5, memory: 1GiB}}"),
    ("missing_hosts", "links: {}\n",
     "{f}: hosts: missing; allowed: a mapping of host names to limits, e.g. {{mobile: {{cpus: 0.5}}}}"),
    ("top_level_list", "- mobile\n- edge\n",
     "{f}: expected a mapping, got a list; allowed: a mapping with name, hosts and links"),
    ("empty_file", "",
     "{f}: the file is empty; allowed: " + SYNTAX),
    ("yaml_syntax_error", "hosts:\n  mobile: {cpus: 0.25\n  edge: {}\n",
     "{f}:3: YAML syntax error: expected ',' or '}}', but got ':' (column 7); allowed: " + SYNTAX),
    ("yaml_tab_indent", "hosts:\n\tmobile: {}\n",
     "{f}:2: YAML syntax error: found character '\\t' that cannot start any token (column 1); allowed: " + SYNTAX),
    ("yaml_two_documents", "hosts: {mobile: {}}\n---\nhosts: {edge: {}}\n",
     "{f}:2: YAML syntax error: expected a single document in the stream, but found another document (column 1); "
     "allowed: " + SYNTAX),
    ("name_not_usable", "name: my topology!\nhosts:\n  mobile: {}\n",
     "{f}:1: name: 'my topology!' is not a usable topology name; "
     "allowed: 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"),
]


def write(tmp_path: Path, text: str, name: str = "topo.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_message(ref: str) -> str:
    with pytest.raises(TopologyError) as info:
        load_topology(ref, cores=2, memory_bytes=8 << 30)
    return str(info.value)


@pytest.mark.parametrize("text, expected", [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_broken_topology_gives_exact_one_line_message(tmp_path, text, expected):
    path = write(tmp_path, text)
    msg = load_message(str(path))
    assert msg == expected.format(f=path)
    assert "\n" not in msg


def test_corpus_cases_have_distinct_names():
    assert len({c[0] for c in CORPUS}) == len(CORPUS)


def test_nonexistent_file_lists_the_builtins(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert load_message(str(missing)) == f"{missing}: no such topology file or built-in; allowed: {REFS}"


def test_unknown_builtin_name_is_reported_like_a_missing_file():
    assert load_message("triple_tier") == f"triple_tier: no such topology file or built-in; allowed: {REFS}"


def test_empty_reference_is_refused():
    assert load_message("") == f"no topology given (''); allowed: {REFS}"


def test_unsupported_file_type_is_refused(tmp_path):
    path = write(tmp_path, "{}", "topo.json")
    assert load_message(str(path)) == f"{path}: unsupported file type '.json'; allowed: {REFS}"


def test_directory_is_not_a_topology(tmp_path):
    assert load_message(str(tmp_path)) == f"{tmp_path}: not a file; allowed: {REFS}"


def test_python_file_that_raises_names_the_file_and_line(tmp_path):
    path = write(tmp_path, textwrap.dedent("""\
        def topology(cores, memory_bytes):
            per_host = cores / 0
            return per_host
        """), "topo.py")
    assert load_message(str(path)) == (
        f"{path}:2: topology() raised ZeroDivisionError: division by zero; allowed: {PYTHON}")


def test_python_file_that_fails_to_import_names_the_line(tmp_path):
    path = write(tmp_path, "import os\nundefined_name\n", "topo.py")
    assert load_message(str(path)) == (
        f"{path}:2: importing raised NameError: name 'undefined_name' is not defined; "
        "allowed: a file defining topology(cores, memory_bytes)")


def test_python_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "def topology(:\n    pass\n", "topo.py")
    assert load_message(str(path)) == f"{path}:1: Python syntax error: invalid syntax; allowed: a valid Python file"


def test_python_file_returning_the_wrong_type_is_refused(tmp_path):
    path = write(tmp_path, "def topology():\n    return ['mobile', 'edge']\n", "topo.py")
    assert load_message(str(path)) == f"{path}: topology() returned a list; allowed: {PYTHON}"


def test_python_file_without_the_function_is_refused(tmp_path):
    path = write(tmp_path, "x = 1\n", "topo.py")
    assert load_message(f"{path}:make") == (
        f"{path}: no function make(); allowed: a file defining make(cores, memory_bytes) or make(), "
        "or FILE.py:FUNCTION")


def test_python_function_with_other_parameters_is_refused(tmp_path):
    path = write(tmp_path, "def topology(a, b, c):\n    pass\n", "topo.py")
    assert load_message(str(path)) == (
        f"{path}: topology() takes parameters other than (cores, memory_bytes); "
        "allowed: topology(cores, memory_bytes) or topology()")


def test_python_file_returning_a_bad_dict_names_the_file(tmp_path):
    path = write(tmp_path, "def topology():\n    return {'hosts': {'mobile': {'cpus': 2000}}}\n", "topo.py")
    assert load_message(str(path)) == (
        f"{path}: hosts.mobile.cpus: 2000 is out of range; allowed: more than 0 and at most 1024 cores, or unlimited")


def test_python_file_returning_an_invalid_spec_names_the_file(tmp_path):
    path = write(tmp_path, textwrap.dedent("""\
        from topologies import HostSpec, LinkSpec, TopologySpec

        def topology():
            return TopologySpec("bad", (HostSpec("mobile"), HostSpec("mobile")), ())
        """), "topo.py")
    assert load_message(str(path)) == f"{path}: hosts.mobile: duplicate host name; allowed: each host name once"


@pytest.mark.parametrize("ref, expected", [
    ("star:mobiles=0", "<builtin star>: mobiles: 0 is out of range; allowed: 1 to 500"),
    ("star:mobiles=501", "<builtin star>: mobiles: 501 is out of range; allowed: 1 to 500"),
    ("star:mobiles=two", "<builtin star>: mobiles: 'two' is not a whole number; allowed: a whole number, e.g. mobiles=4"),
    ("star:mobiles=2.5", "<builtin star>: mobiles: '2.5' is not a whole number; allowed: a whole number, e.g. mobiles=4"),
    ("star:mobile=3", "<builtin star>: mobile: unknown parameter; allowed: mobiles=N"),
    ("star:mobiles", "<builtin star>: 'mobiles' is not NAME=VALUE; allowed: mobiles=N"),
    ("star:mobiles=2,mobiles=3", "<builtin star>: mobiles: given twice; allowed: each parameter once"),
    ("three_tier:mobiles=2", "<builtin three_tier>: mobiles: unknown parameter; allowed: no parameters"),
    ("multi_edge:edges=0", "<builtin multi_edge>: edges: 0 is out of range; allowed: 1 to 50"),
    ("multi_edge:edges=50,mobiles_per_edge=20",
     "<builtin multi_edge>: mobiles_per_edge: 50 edges x 20 mobiles is 1000 mobiles; allowed: at most 500 mobiles in all"),
])
def test_bad_builtin_parameters_are_reported(ref, expected):
    assert load_message(ref) == expected
