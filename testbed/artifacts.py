"""An experiment's artifacts: build each (model, operator chain, parts) it needs once, and name
the ONNX parts each host computes.

Three commands need this and share it: `testbed prepare` (stops at the first artifact that
cannot be built), `testbed run` (stores that artifact's cells as failed and runs the rest)
and `testbed calibrate EXPERIMENT` (checks each host's compute on exactly its parts). No
root and no network: `workloads.prepare` does the building and caches it by content.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from workloads.errors import WorkloadError

from .experiment import ArtifactNeed, Experiment


def need_label(need: ArtifactNeed) -> str:
    """``model [op → op] xN``: one artifact, as progress lines name it."""
    chain = " → ".join(c.label() for c in need.operators) or "none"
    return f"{need.model.name} [{chain}] x{need.parts}"


def prepare_needs(needs: Iterable[ArtifactNeed], *, cache=None,
                  progress: Callable[[str], None] = lambda message: None) -> Iterator[tuple[ArtifactNeed, object]]:
    """Build (or find in the cache) each artifact in turn: yields ``(need, Prepared)``, or
    ``(need, WorkloadError)`` for one that cannot be built (an operator the model cannot take,
    a download), so that the caller decides whether that ends its work. ``progress`` hears
    ``preparing i/n: <need_label>`` and the builder's own steps."""
    from workloads.prepare import prepare

    needs = list(needs)
    for i, need in enumerate(needs, 1):
        progress(f"preparing {i}/{len(needs)}: {need_label(need)}")
        try:
            yield need, prepare(need.model.name, need.operators, parts=need.parts, weights=need.model.weights,
                                data=need.model.data, cache=cache, progress=progress)
        except WorkloadError as e:
            yield need, e


def prepare_all(needs: Iterable[ArtifactNeed], *, cache=None,
                progress: Callable[[str], None] = lambda message: None) -> dict[ArtifactNeed, object]:
    """Every artifact built, or the first :class:`WorkloadError` raised (with its model)."""
    built = {}
    for need, result in prepare_needs(needs, cache=cache, progress=progress):
        if isinstance(result, WorkloadError):
            raise WorkloadError(f"{need_label(need)}: {result}") from None
        built[need] = result
    return built


def calibration_work(exp: Experiment, progress: Callable[[str], None] = lambda message: None
                     ) -> dict[str, list[tuple[str, list[str]]]]:
    """host -> [(label, compute-probe arguments)] for every part ``exp``'s strategies place on
    that host (:meth:`Experiment.parts_by_host`, worked out once), their artifacts prepared
    first (cached; the first that cannot be built is the error). The probe runs the part as
    its server does (``--artifact``: every segment of the part, exits; a later part fed by
    the parts ahead of it)."""
    by_host = exp.parts_by_host()
    needs = list(dict.fromkeys(need for parts in by_host.values() for need, _, _ in parts))
    built = prepare_all(needs, progress=progress)
    work: dict[str, list[tuple[str, list[str]]]] = {}
    for host, parts in by_host.items():
        for need, i, strategy in parts:
            folder = built[need].path
            args = ["--artifact", str(folder), "--part", str(i)]
            label = f"{need.model.name} [{strategy}]" + (f" part {i + 1}/{need.parts}" if need.parts > 1 else "")
            work.setdefault(host, []).append((label, args))
    return work


def write_request_inputs(model, count: int, folder: Path, cache=None) -> Path:
    """The first ``count`` request inputs of ``model`` (a :class:`testbed.experiment.ModelRef`:
    its evaluation data with their reference outputs, as a run's client sends them) saved in
    ``folder`` as ``<model>-<digest>.npz``, whole or not at all (a full disk stops nothing
    halfway); a file already there is reused. `testbed run` and `testbed profile` both send these."""
    import hashlib
    import json
    import os

    from workloads.prepare import request_inputs
    from workloads.serving import save_inputs

    digest = hashlib.sha256(json.dumps({**model.to_dict(), "inputs": count}, sort_keys=True).encode()).hexdigest()[:10]
    path = Path(folder) / f"{model.name.replace('/', '_').replace(':', '_')}-{digest}.npz"
    if path.exists():
        return path
    samples, refs = request_inputs(model.name, weights=model.weights, data=model.data, count=count, cache=cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            save_inputs(f, samples, refs)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
