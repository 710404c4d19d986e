"""``--set PATH=VALUE`` overrides on a loaded spec.

Paths (values are parsed exactly as in YAML; ``none``/``unlimited`` clears cpus, memory and
bandwidth, ``auto`` gives the queue back to the emulation, ``none`` clears a cpuset):

- ``hosts.<host>.cpus|memory|cpuset|cpu_period``
- ``links.<a-b>.bandwidth|delay|jitter|loss|queue`` -- both directions; the link may be
  written either way round;
- ``links.<a-b>.forward.<field>`` / ``links.<a-b>.reverse.<field>`` -- one direction,
  forward being a -> b of the link *as defined*; writing the name the other way round here
  is an error rather than a guess.

Callers may rely on: overrides apply in the order given, the result is re-validated, and
every problem is one TopologyError with source ``--set`` (or the ``source`` passed).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from .checks import validate
from .errors import TopologyError
from .fields import DIRECTION_FIELDS, DIRECTIONS, HOST_FIELDS
from .spec import TopologySpec


def _alternatives(names: list[str], limit: int = 10) -> str:
    if len(names) > limit:
        names = names[: limit - 2] + [f"...({len(names)} in all)"]
    return "|".join(names)


def override_paths(spec: TopologySpec) -> str:
    """The paths ``apply_overrides`` accepts for ``spec``, as one line of patterns."""
    hosts = _alternatives([h.name for h in spec.hosts])
    links = _alternatives([link.name for link in spec.links])
    text = f"hosts.<{hosts}>.<{'|'.join(HOST_FIELDS)}>"
    if spec.links:
        text += f", links.<{links}>[.forward|.reverse].<{'|'.join(DIRECTION_FIELDS)}>"
    return text


def _fail(spec: TopologySpec, source: str, path: object, problem: str, allowed: str | None = None) -> None:
    raise TopologyError(problem, allowed or override_paths(spec), source=source, path=str(path))


def _parse(table: dict, key: str, value: object, source: str, path: str) -> object:
    try:
        return table[key][1](value)
    except TopologyError as e:
        raise e.located(source=source, path=path) from None


def apply_overrides(spec: TopologySpec, overrides: Mapping[str, str] | Iterable[tuple[str, str]],
                    source: str = "--set") -> TopologySpec:
    """A copy of ``spec`` with each ``(path, value)`` applied, validated again."""
    validate(spec)  # a problem that was there before is the spec's, not the override's
    items = list(overrides.items()) if isinstance(overrides, Mapping) else list(overrides)
    hosts = {h.name: h for h in spec.hosts}
    links = {link.name: link for link in spec.links}
    touched: dict[str, int | None] = {}  # canonical paths set, so errors name them

    for path, value in items:
        parts = path.split(".") if isinstance(path, str) else []
        if parts[:1] == ["hosts"] and len(parts) == 3:
            _, hname, key = parts
            if hname not in hosts:
                _fail(spec, source, path, f"unknown host '{hname}'")
            if key not in HOST_FIELDS:
                _fail(spec, source, path, f"unknown field '{key}'")
            new = _parse(HOST_FIELDS, key, value, source, path)
            hosts[hname] = replace(hosts[hname], **{HOST_FIELDS[key][0]: new})
            touched[f"hosts.{hname}.{key}"] = None
        elif parts[:1] == ["links"] and len(parts) in (3, 4):
            lname, key = parts[1], parts[-1]
            link = links.get(lname) or next((l for l in links.values() if f"{l.b}-{l.a}" == lname), None)
            if link is None:
                _fail(spec, source, path, f"unknown link '{lname}'")
            if len(parts) == 4 and parts[2] not in DIRECTIONS:
                _fail(spec, source, path, f"unknown direction '{parts[2]}'")
            if key not in DIRECTION_FIELDS:
                _fail(spec, source, path, f"unknown field '{key}'")
            if len(parts) == 4 and lname != link.name:
                _fail(spec, source, path, f"forward/reverse are relative to the link as defined, {link.name}",
                      f"links.{link.name}.{parts[2]}.{key}")
            new = _parse(DIRECTION_FIELDS, key, value, source, path)
            attr = DIRECTION_FIELDS[key][0]
            chosen = DIRECTIONS if len(parts) == 3 else (parts[2],)
            links[link.name] = replace(link, **{d: replace(getattr(link, d), **{attr: new}) for d in chosen})
            touched[".".join(["links", link.name, *parts[2:]])] = None
        else:
            _fail(spec, source, path, "unknown path")

    result = replace(spec, hosts=tuple(hosts.values()), links=tuple(links.values()))
    return validate(result, where=touched, source=source)
