"""Topology specs for the testbed: plain frozen data, loaded from built-ins, YAML or Python.

Nothing here touches the kernel or imports Mininet: a spec says *what* to emulate
(hosts with CPU/memory limits, links with per-direction rate/delay/jitter/loss/queue),
``emulation`` decides *how*. The YAML shape is documented in :mod:`topologies.loader`.

Every problem is a :class:`TopologyError` whose ``str()`` is one line:
``<source>:<line>: <field path>: <problem>; allowed: <what is allowed>``.
"""
from __future__ import annotations

from .builtin import BUILTINS, budget_units
from .checks import validate
from .errors import TopologyError
from .loader import load_topology, load_topology_dict
from .overrides import apply_overrides, override_paths
from .spec import DirectionSpec, HostSpec, LinkSpec, TopologySpec
from .units import (format_cpuset, format_duration_ms, format_fraction, format_rate, format_size, parse_cpuset,
                    parse_duration_ms, parse_fraction, parse_rate, parse_size)

__all__ = [
    "BUILTINS", "DirectionSpec", "HostSpec", "LinkSpec", "TopologyError", "TopologySpec", "apply_overrides",
    "budget_units", "format_cpuset", "format_duration_ms", "format_fraction", "format_rate", "format_size",
    "load_topology", "load_topology_dict", "override_paths", "parse_cpuset", "parse_duration_ms",
    "parse_fraction", "parse_rate", "parse_size", "validate",
]
