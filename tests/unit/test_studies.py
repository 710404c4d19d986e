"""The ready-made studies in studies/ load as they are (on this machine's budget and on the
GPU machine's 16 cores), each with the grid its comment promises."""
from __future__ import annotations

from pathlib import Path

import pytest

from testbed.experiment import load_experiment

STUDIES = sorted((Path(__file__).resolve().parents[2] / "studies").glob("*.yaml"))


def test_the_studies_are_there():
    assert {p.stem for p in STUDIES} >= {"blackbox", "whitebox", "bandwidth", "cpu_period"}


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
@pytest.mark.parametrize("cores", [2.0, 16.0])
def test_every_study_loads_and_has_cells(path, cores):
    exp = load_experiment(path, cores=cores, memory_bytes=8 << 30)
    points = list(exp.points())
    assert points and exp.models and exp.strategies
    if path.stem == "bandwidth":
        assert len(points) == 36
    if path.stem == "cpu_period":
        grid = [(e.topology.host("mobile").cpu_period_us, e.serving.pace) for _, e in points]
        assert grid == [(p, pace) for p in (100_000, 10_000, None) for pace in (False, True)]  # None: auto
