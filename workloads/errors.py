"""The one error type of `workloads`: a message of one line that says what, where and what to do."""
from __future__ import annotations

from topologies.errors import TestbedError


class WorkloadError(TestbedError):
    """Bad model, data, operator or parameter. ``str(e)`` is one line meant for the user."""


def choices(values) -> str:
    """``a, b, c`` for an error line listing what is valid."""
    return ", ".join(str(v) for v in values) or "(none)"
