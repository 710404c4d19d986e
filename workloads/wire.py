"""The names of the two wire settings an experiment chooses, defined once for the file, the
frame codec and the host servers.

- ``CODECS``: how a frame carries its tensors, name -> the codec id in a frame's prefix
  (:mod:`workloads.codec` documents the frame);
- ``CONNECTIONS``: how a process reaches the next hop, one connection kept open
  (``persistent``) or a new TCP connection for every request (``per-request``, as the
  studies' HTTP clients did; :mod:`workloads.serving`);
- ``GENERATOR_CONNECTIONS``: the most connections one load generator keeps open at once
  (:mod:`workloads.loadgen`), which a server's connection cap (``serving.max_connections``)
  must leave room for.

The first name of each is the default. Standard library only (nothing at all), so that
loading an experiment file does not import numpy.
"""
from __future__ import annotations

CODECS: dict[str, int] = {"binary": 0, "json-base64": 1}
CONNECTIONS = ("persistent", "per-request")
GENERATOR_CONNECTIONS = 512
