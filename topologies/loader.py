"""Loading topologies: built-ins, YAML files and Python files, always validated.

The YAML shape
--------------

.. code-block:: yaml

    name: my-topology                 # optional; default: the file name without extension
    hosts:                            # required: host name -> limits
      mobile: {cpus: 0.25, memory: 1GiB}
      edge:   {cpus: 0.5, memory: 4GiB, cpuset: "0-1"}
      cloud:  {}                      # unlimited (an empty value means the same)
    links:                            # "a-b" -> shaping; may be left out only with one host
      mobile-edge: {bandwidth: 200Mbit, delay: 5ms, jitter: 1ms, loss: 0.1%, queue: 256KiB}
      edge-cloud:
        bandwidth: 1Mbit
        reverse: {bandwidth: 10Mbit}  # per-direction overrides: forward (a->b) / reverse (b->a)

Top-level keys: ``name``, ``hosts``, ``links``; nothing else.

Host keys (all optional; leaving one out means no limit):

- ``cpus``: cores, fractions allowed (a CPU quota), in (0, 1024]; or ``unlimited``;
- ``memory``: a size with a unit, 16MiB..64TiB: ``B``, ``KB``, ``MB``, ``GB``, ``TB``
  (powers of 1000), ``KiB``, ``MiB``, ``GiB``, ``TiB`` (powers of 1024); or ``unlimited``;
- ``cpuset``: CPUs the host may run on, ``"0-3,5"`` or ``[0, 1]``.

Host names match ``^[a-z][a-z0-9_]{0,23}$``: no ``-``, which joins the two hosts of a link
name. Link keys (all optional; the defaults are an unshaped link without impairments):

- ``bandwidth``: ``bit``, ``kbit``, ``Mbit``, ``Gbit``, ``Tbit`` (or ``bps``, ``kbps``,
  ``Mbps``, ``Gbps``, ``Tbps``), decimal prefixes as in tc, 1kbit..100Gbit; or ``unlimited``;
- ``delay``: one-way added delay, ``us``, ``ms`` or ``s``, 0..60s;
- ``jitter``: the delay varies by up to +- this; 0..delay;
- ``loss``: a percentage, 0% up to but not including 100%;
- ``queue``: the sender's queue as a size, 1514B..1GiB; or ``auto`` (the default: the
  emulation sizes it from the bandwidth-delay product);
- ``forward`` / ``reverse``: a mapping of the keys above for the direction a->b / b->a
  only; it overrides the link-level value for that direction.

A bare number is refused wherever a unit is expected (is ``delay: 5`` seconds or
milliseconds?), except ``0``. Every problem is reported as one line naming the file, the
line, the field path and what is allowed (see :class:`topologies.TopologyError`).

Python topology files define ``topology(cores, memory_bytes)`` (or ``topology()``) and
return a :class:`~topologies.TopologySpec` or a dict in the shape above; ``file.py:func``
names another function. A Python file is trusted code: loading it runs it, with the
testbed's rights (root), under ``testbed run --dry-run`` too (it must run to say what the
topology is). So it is refused, and not run, unless the file and every folder above it
pass :func:`topologies.trust.read_code` (owned by root or the invoking user, writable by no
one else; a sticky folder such as ``/tmp`` may be), and what runs is the bytes checked.
"""
from __future__ import annotations

import importlib.util
import inspect
import re
import sys
import traceback
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from .builtin import BUILTINS, run_builtin
from .checks import TOPOLOGY_NAME, validate
from .errors import TopologyError, kind_of
from .fields import DIRECTION_FIELDS, DIRECTIONS, HOST_FIELDS, LINK_KEYS, TOP_KEYS
from .reader import DocumentReader, read_text
from .spec import DirectionSpec, HostSpec, LinkSpec, TopologySpec
from .trust import UntrustedError, read_code

YAML_SUFFIXES = (".yaml", ".yml")
PYTHON_ALLOWED = "a function returning a TopologySpec or a dict in the YAML shape"


def _refs_allowed() -> str:
    return f"a .yaml, .yml or .py file, or a built-in: {', '.join(BUILTINS)}"


def _default_name(source: str) -> str:
    if source.startswith("<"):
        return "topology"
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(source).stem)[:64]
    return stem if TOPOLOGY_NAME.match(stem) else "topology"


class _Reader(DocumentReader):
    """Turns the plain data of one document into a spec, raising located errors."""

    def fields(self, body: dict, path: str, table: dict) -> dict:
        out = {}
        for key, (attr, parse, _) in table.items():
            if key in body:
                try:
                    out[attr] = parse(body[key])
                except TopologyError as e:
                    self.fail(f"{path}.{key}", e.problem, e.allowed)
        return out

    def spec(self, data: object) -> TopologySpec:
        top = self.mapping(data, "", TOP_KEYS, "a mapping with name, hosts and links")
        name = top.get("name", _default_name(self.source_name))
        if not isinstance(name, str):
            self.fail("name", f"expected a string, got {kind_of(name)}", "a name such as my-topology")
        hosts_allowed = "a mapping of host names to limits, e.g. {mobile: {cpus: 0.5}}"
        if top.get("hosts") is None:
            self.fail("hosts", "missing", hosts_allowed)
        hosts = []
        for hname, body in self.mapping(top["hosts"], "hosts", None, hosts_allowed).items():
            body = self.mapping(body, f"hosts.{hname}", tuple(HOST_FIELDS), "e.g. {cpus: 0.5, memory: 1GiB}")
            hosts.append(HostSpec(name=hname, **self.fields(body, f"hosts.{hname}", HOST_FIELDS)))
        links_data = self.mapping(top.get("links"), "links", None,
                                  "a mapping of links to shaping, e.g. {mobile-edge: {bandwidth: 200Mbit}}")
        links = []
        for lname, body in links_data.items():
            path = f"links.{lname}"
            ends = lname.split("-") if isinstance(lname, str) else []
            if len(ends) != 2 or not all(ends):
                self.fail(path, "not two host names joined by '-'", "e.g. mobile-edge")
            body = self.mapping(body, path, LINK_KEYS, "e.g. {bandwidth: 200Mbit, delay: 5ms}")
            shared = self.fields(body, path, DIRECTION_FIELDS)
            directions = []
            for dname in DIRECTIONS:
                own = self.mapping(body.get(dname), f"{path}.{dname}", tuple(DIRECTION_FIELDS),
                                   "e.g. {bandwidth: 10Mbit}")
                directions.append(DirectionSpec(**{**shared, **self.fields(own, f"{path}.{dname}",
                                                                            DIRECTION_FIELDS)}))
            links.append(LinkSpec(ends[0], ends[1], *directions))
        spec = TopologySpec(name=name, hosts=tuple(hosts), links=tuple(links), source=self.source_name)
        return validate(spec, where=self.lines)


def load_topology_dict(data: dict, source: str = "<memory>", lines: Mapping[str, int] | None = None) -> TopologySpec:
    """A validated spec from the YAML shape (see the module docstring).

    ``lines`` maps dotted key paths (``hosts.edge.cpus``) to the lines they were written on,
    so errors can name them; ``source`` names the origin in errors and on the spec.
    """
    return _Reader(source, lines or {}).spec(data)


def _load_yaml(path: Path, source: str) -> TopologySpec:
    from .yamlsrc import read_yaml

    data, lines = read_yaml(read_text(path, source), source)
    return load_topology_dict(data, source, lines)  # type: ignore[arg-type]


def _error_line(tb, path: Path) -> int | None:
    """The last line of ``path`` that the traceback passed through."""
    line = None
    for frame in traceback.extract_tb(tb):
        if Path(frame.filename).resolve() == path:
            line = frame.lineno
    return line


def _load_python(path: Path, func_name: str, source: str, cores: float, memory_bytes: int) -> TopologySpec:
    try:
        resolved, code = read_code(path)     # refused unless only root or the user can change it
    except UntrustedError as e:
        raise TopologyError(e.problem, e.allowed, source=source) from None
    module_name = f"_testbed_topology_{abs(hash(str(resolved)))}"
    module_spec = importlib.util.spec_from_file_location(module_name, resolved)
    if module_spec is None:
        raise TopologyError("cannot be imported", "a Python file", source=source)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses defined in the file look their module up here
    try:
        try:
            # the bytes that were checked, not the file again (nor a cached .pyc beside it)
            exec(compile(code, str(resolved), "exec", dont_inherit=True), module.__dict__)  # noqa: S102
        except SyntaxError as e:
            raise TopologyError(f"Python syntax error: {e.msg}", "a valid Python file", source=source,
                                line=e.lineno) from None
        except BaseException as e:  # noqa: BLE001 - whatever the file does, the caller gets one line
            if isinstance(e, KeyboardInterrupt):
                raise
            raise TopologyError(f"importing raised {type(e).__name__}: {e}",
                                f"a file defining {func_name}(cores, memory_bytes)", source=source,
                                line=_error_line(e.__traceback__, resolved)) from None
        func = getattr(module, func_name, None)
        if not callable(func):
            raise TopologyError(f"no function {func_name}()", f"a file defining {func_name}(cores, memory_bytes) "
                                f"or {func_name}(), or FILE.py:FUNCTION", source=source)
        try:
            sig = inspect.signature(func)
            args: tuple = (cores, memory_bytes)
            try:
                sig.bind(*args)
            except TypeError:
                sig.bind()
                args = ()
        except (TypeError, ValueError):
            raise TopologyError(f"{func_name}() takes parameters other than (cores, memory_bytes)",
                                f"{func_name}(cores, memory_bytes) or {func_name}()", source=source) from None
        try:
            result = func(*args)
        except TopologyError as e:
            raise e.located(source=source) from None
        except BaseException as e:  # noqa: BLE001
            if isinstance(e, KeyboardInterrupt):
                raise
            raise TopologyError(f"{func_name}() raised {type(e).__name__}: {e}", PYTHON_ALLOWED, source=source,
                                line=_error_line(e.__traceback__, resolved)) from None
    finally:
        sys.modules.pop(module_name, None)
    if isinstance(result, TopologySpec):
        return validate(result if result.source != "<memory>" else replace(result, source=source))
    if isinstance(result, dict):
        return load_topology_dict(result, source)
    raise TopologyError(f"{func_name}() returned {kind_of(result)}", PYTHON_ALLOWED, source=source)


def load_topology(ref: str, *, cores: float, memory_bytes: int) -> TopologySpec:
    """A validated spec from ``ref``, which is one of

    - a built-in name, optionally with integer parameters: ``three_tier``,
      ``star:mobiles=50``, ``multi_edge:edges=3,mobiles_per_edge=2``;
    - a ``.yaml`` / ``.yml`` file;
    - a ``.py`` file defining ``topology(cores, memory_bytes)`` or ``topology()``, or
      ``file.py:function`` naming another function.

    ``cores`` and ``memory_bytes`` are this machine's budget; built-ins (and Python files
    that want them) scale their hosts to it. Every problem is a one-line TopologyError.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise TopologyError(f"no topology given ({ref!r})", _refs_allowed())
    name, _, params = ref.partition(":")
    if name in BUILTINS:
        return run_builtin(name, params, cores=cores, memory_bytes=memory_bytes)
    path, func_name = Path(ref), "topology"
    if not path.exists() and ":" in ref:
        file_part, _, func_part = ref.rpartition(":")
        if file_part.endswith(".py"):
            if not func_part.isidentifier():
                raise TopologyError(f"'{func_part}' is not a function name", "FILE.py:FUNCTION", source=ref)
            path, func_name = Path(file_part), func_part
    source = str(path)
    if not path.exists():
        raise TopologyError("no such topology file or built-in", _refs_allowed(), source=source)
    if not path.is_file():
        raise TopologyError("not a file", _refs_allowed(), source=source)
    suffix = path.suffix.lower()
    if suffix in YAML_SUFFIXES:
        return _load_yaml(path, source)
    if suffix == ".py":
        return _load_python(path, func_name, source, cores, memory_bytes)
    raise TopologyError(f"unsupported file type '{path.suffix or '(none)'}'", _refs_allowed(), source=source)
