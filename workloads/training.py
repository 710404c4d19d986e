"""The one training loop of the testbed: prepare → train → convert.

Everything that changes weights goes through `fit`: the offline models of the zoo, exit heads,
and later quantization-aware training, pruning and distillation. Those differ only in what
happens around the loop, so the loop stays small:

* **prepare** (the caller): build the module; wrap or instrument it (fake-quant observers, pruning
  masks, a frozen teacher) before calling `fit`.
* **train** (`fit`): a seeded shuffle, mini-batches from a `Dataset`, forward, loss, backward,
  optimizer step, until the budget (epochs, steps or wall seconds; the first reached) is spent.
  ``hooks`` see every step and epoch (e.g. re-apply pruning masks after each step).
* **convert** (the caller): `fit` leaves the module in eval mode; fold or strip what prepare
  added, then export.

Inputs reach the module by name: a module with one input gets it positionally, one with several
(``input_ids``, ``attention_mask``) gets them as keyword arguments named like the data set's
inputs. The loss is per-sample cross entropy on (N, C) logits with (N,) labels, or per-pixel on
(N, C, H, W) logits with (N, H, W) labels; ``"mse"`` or any callable ``loss(outputs, labels)``
also work (e.g. soft teacher targets kept in ``Dataset.labels``).

Runs are deterministic for a given seed, thread count and budget in epochs or steps (the shuffle
comes from numpy's seeded generator, initial weights from ``torch.manual_seed``); a budget in
seconds stops wherever the clock says. torch is imported inside the functions.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from topologies.errors import no_space, no_space_line

from .data import Dataset
from .errors import WorkloadError, choices

LOSSES = ("cross_entropy", "mse")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")


def outputs_tensor(out):
    """The first tensor of a module's output: a tensor, a tuple's first item, ``.logits`` of a
    transformers output, or the ``"out"`` entry of a dict (torchvision segmentation models)."""
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, dict):
        return out["out"] if "out" in out else next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def forward(module, inputs: dict, input_names: Sequence[str]):
    """``module`` applied to ``inputs`` (torch tensors keyed by name), see the module docstring."""
    if len(input_names) == 1:
        return outputs_tensor(module(inputs[input_names[0]]))
    return outputs_tensor(module(**{n: inputs[n] for n in input_names}))


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Use ``threads`` intra-op threads inside the block (None: leave torch's setting)."""
    import torch

    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def predict(module, data: Dataset, input_names: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Outputs (logits) of ``module`` in eval mode on every sample of ``data``, as one array."""
    import torch

    module.eval()
    outs = []
    with torch.no_grad():
        for inputs, _ in data.batches(batch_size):
            outs.append(forward(module, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()},
                                input_names).numpy())
    return np.concatenate(outs)


def score(logits: np.ndarray, labels: np.ndarray, task: str, classes: int | None = None) -> float:
    """`metrics.accuracy` (classification) or `metrics.miou` (segmentation; ``classes`` defaults
    to the largest id seen + 1) of ``logits`` (class axis 1) against ``labels``."""
    from . import metrics

    if task != "segmentation":
        return metrics.accuracy(logits, labels)
    pred = metrics.top1(logits)
    return metrics.miou(pred, labels, classes or int(max(pred.max(), labels.max())) + 1)


def _loss_fn(loss):
    import torch.nn.functional as F

    if callable(loss):
        return loss
    if loss == "cross_entropy":
        return lambda out, y: F.cross_entropy(out, y)
    if loss == "mse":
        return lambda out, y: F.mse_loss(out, y)
    raise WorkloadError(f"training: loss {loss!r} unknown; allowed: {choices(LOSSES)} or a callable")


def _optimizer(name: str, params, lr: float, weight_decay: float):
    import torch

    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise WorkloadError(f"training: optimizer {name!r} unknown; allowed: {choices(OPTIMIZERS)}")


def fit(module, train: Dataset, *, input_names: Sequence[str], loss: str | Callable = "cross_entropy",
        epochs: int | None = None, steps: int | None = None, seconds: float | None = None,
        batch_size: int = 128, lr: float = 1e-3, optimizer: str = "adam", weight_decay: float = 0.0,
        schedule: str = "cosine", seed: int = 0, progress: Callable[[str], None] | None = None,
        validate: Dataset | None = None, hooks: Iterable[Callable[[str, dict], None]] = (),
        threads: int | None = None, checkpoint: str | Path | None = None,
        checkpoint_every_s: float = 30.0) -> dict:
    """Train ``module`` in place on ``train`` (labelled) and return its history.

    Budget: ``epochs``, ``steps`` (optimizer steps) and/or ``seconds`` (wall clock); training stops
    when the first one given is spent (at least one is required). Only parameters with
    ``requires_grad`` are optimized (freeze a backbone by turning it off).

    ``optimizer``: ``adam``, ``adamw`` or ``sgd`` (momentum 0.9). ``schedule``: ``"cosine"``
    decays the learning rate to 0 over the budget when it is in epochs or steps (constant under
    a seconds-only budget); ``"constant"`` keeps it. ``validate``: a labelled data set scored
    after every epoch (accuracy, or mIoU for segmentation). ``hooks``: callables
    ``hook(event, state)`` with event ``"step"`` (after each optimizer step) or ``"epoch"``;
    ``state`` holds ``module``, ``optimizer``, ``step``, ``epoch``, ``loss``. ``threads``: torch
    intra-op threads for the run (None: torch's current setting). ``progress(message)``: a
    line every few seconds (step, loss) and one per epoch (loss, validation metric).

    ``checkpoint``: a file where the run's whole state (weights, optimizer, schedule, shuffle
    order and random state, history, position in the epoch) is saved at the end of every epoch
    and at least every ``checkpoint_every_s`` seconds, written atomically, as tensors and plain
    data only (``torch.load(weights_only=True)`` reads it), with the run's fingerprint in
    ``<checkpoint>.json`` beside it. When the file exists at the start, its fingerprint is
    checked first (another run's is an error), then training resumes from it (same module
    structure, data and settings required) instead of restarting, and ends as an
    uninterrupted run with the same seed would; a checkpoint that is not in that format (an
    old pickle, or anything that would run code) is discarded, never loaded. Both files are
    removed when training completes.

    Returns ``{"loss": [mean loss per epoch], "val": [metric per epoch], "val_metric": name,
    "steps", "epochs" (completed epochs, a float), "samples", "seconds", "stopped_by"}``; the
    module is left in eval mode.
    """
    import torch

    if epochs is None and steps is None and seconds is None:
        raise WorkloadError("training: give a budget (epochs, steps or seconds)")
    if not train.labelled:
        raise WorkloadError(f"training on {train.name}: the data set has no labels")
    missing = [n for n in input_names if n not in train.inputs]
    if missing:
        raise WorkloadError(f"training on {train.name}: input {missing[0]!r} not in the data set; "
                            f"it has {choices(train.inputs)}")
    if schedule not in SCHEDULES:
        raise WorkloadError(f"training: schedule {schedule!r} unknown; allowed: {choices(SCHEDULES)}")
    loss_of = _loss_fn(loss)
    hooks = tuple(hooks)
    n = len(train)
    per_epoch = math.ceil(n / batch_size)
    if n == 0:
        raise WorkloadError(f"training on {train.name}: the data set is empty")
    limits = [x for x in (steps, None if epochs is None else epochs * per_epoch) if x is not None]
    total = min(limits) if limits else None        # steps the schedule spans
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise WorkloadError("training: the module has no trainable parameters")
    opt = _optimizer(optimizer, params, lr, weight_decay)
    cosine = schedule == "cosine" and total
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)) if cosine else 1.0)
    history = {"loss": [], "val": [], "val_metric": None if validate is None else
               ("miou" if validate.task == "segmentation" else "accuracy"),
               "steps": 0, "epochs": 0.0, "samples": 0, "seconds": 0.0, "stopped_by": None}
    state = {"module": module, "optimizer": opt, "step": 0, "epoch": 0, "loss": None}
    t0 = time.monotonic()
    inputs = {k: train.inputs[k] for k in input_names}
    labels = train.labels
    if isinstance(loss, str) and loss == "cross_entropy":
        labels = labels.astype(np.int64, copy=False)

    epoch, start_batch, order, losses, seen = 0, 0, None, [], 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    # taken before training: state that changes shape as it trains (a per-channel observer's
    # min/max start empty) must not make a run's own checkpoint look like another run's
    fingerprint = _fingerprint(module, n, batch_size, seed)
    saved = _load_checkpoint(ckpt, fingerprint, progress) if ckpt is not None else None
    if saved is not None:
        module.load_state_dict(saved["module"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        history, epoch, start_batch = saved["history"], saved["epoch"], saved["batch"]
        order = None if saved["order"] is None else saved["order"].numpy()
        losses, seen = saved["losses"], saved["seen"]
        rng.bit_generator.state = saved["rng"]
        torch.set_rng_state(saved["torch_rng"])
        t0 -= saved["elapsed"]
        history.setdefault("resumed_at", []).append(history["steps"])
        if progress:
            progress(f"resuming from checkpoint: epoch {epoch + 1}, step {history['steps']}")

    def save(batch: int) -> None:
        if ckpt is None:
            return
        tmp = ckpt.with_name(ckpt.name + ".tmp")
        # tensors and plain data only (the shuffle order as a tensor, not a numpy array), which
        # torch.load(weights_only=True) reads back without running any pickled code
        try:
            _write_fingerprint(ckpt, fingerprint)      # first: a checkpoint never exists without it
            with open(tmp, "wb", opener=_private) as f:   # a Python file: a full disk is an OSError, not torch's
                torch.save({"fingerprint": fingerprint, "module": module.state_dict(),
                            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "history": history,
                            "epoch": epoch, "batch": batch,
                            "order": None if order is None else torch.from_numpy(order),
                            "losses": losses, "seen": seen, "rng": rng.bit_generator.state,
                            "torch_rng": torch.get_rng_state(), "elapsed": time.monotonic() - t0}, f)
            os.replace(tmp, ckpt)
        except BaseException as e:
            tmp.unlink(missing_ok=True)     # the last complete checkpoint stays
            if no_space(e):
                raise WorkloadError("training: " + no_space_line(
                    tmp, "move the cache (TESTBED_CACHE) elsewhere; training resumes from its last "
                         "checkpoint when run again")) from None
            raise

    last_save = last_note = time.monotonic()
    with torch_threads(threads):
        module.train()
        while history["stopped_by"] is None:
            if order is None:
                order = rng.permutation(n)
                losses, seen = [], 0
            for b in range(start_batch, per_epoch):
                idx = np.sort(order[b * batch_size:(b + 1) * batch_size])
                x = {k: torch.from_numpy(v[idx]) for k, v in inputs.items()}
                y = torch.from_numpy(labels[idx])
                value = loss_of(forward(module, x, input_names), y)
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
                sched.step()
                history["steps"] += 1
                seen += len(idx)
                losses.append(float(value.detach()) * len(idx))
                state.update(step=history["steps"], epoch=epoch, loss=losses[-1] / len(idx))
                for hook in hooks:
                    hook("step", state)
                if steps is not None and history["steps"] >= steps:
                    history["stopped_by"] = "steps"
                elif seconds is not None and time.monotonic() - t0 >= seconds:
                    history["stopped_by"] = "seconds"
                if history["stopped_by"]:
                    break
                now = time.monotonic()
                if progress and now - last_note >= 2.0:
                    last_note = now
                    of = f"/{total}" if total else ""
                    progress(f"epoch {epoch + 1}, step {history['steps']}{of}: loss {losses[-1] / len(idx):.4f}")
                if now - last_save >= checkpoint_every_s:
                    save(b + 1)
                    last_save = now
            start_batch = 0
            order = None
            epoch += 1
            history["epochs"] = round(history["epochs"] + seen / n, 4)
            history["samples"] += seen
            history["loss"].append(round(sum(losses) / max(seen, 1), 6))
            if epochs is not None and epoch >= epochs and history["stopped_by"] is None:
                history["stopped_by"] = "epochs"
            if validate is not None:
                history["val"].append(round(score(predict(module, validate, input_names), validate.labels,
                                                  validate.task), 5))
                module.train()
            for hook in hooks:
                hook("epoch", state)
            if progress:
                val = f", {history['val_metric']} {history['val'][-1]:.4f}" if history["val"] else ""
                progress(f"epoch {epoch}: loss {history['loss'][-1]:.4f}{val} "
                         f"({time.monotonic() - t0:.0f} s, {history['steps']} steps)")
            if history["stopped_by"] is None:
                save(0)
                last_save = time.monotonic()
        module.eval()
    history["seconds"] = round(time.monotonic() - t0, 2)
    if ckpt is not None:
        ckpt.unlink(missing_ok=True)
        _fingerprint_path(ckpt).unlink(missing_ok=True)
    return history


def _private(path: str, flags: int) -> int:
    """Open for writing with mode 0o644 (the umask may only narrow it): a checkpoint is read
    back as trusted state, so no one but its owner may change it."""
    return os.open(path, flags, 0o644)


def _fingerprint_path(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + ".json")


def _write_fingerprint(ckpt: Path, fingerprint: list) -> None:
    """``<checkpoint>.json``: the run's fingerprint, readable without loading the checkpoint.
    Written once per run (it does not change while the run saves), atomically."""
    path = _fingerprint_path(ckpt)
    text = json.dumps({"fingerprint": fingerprint})
    with contextlib.suppress(OSError):
        if path.read_text() == text:
            return
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", opener=_private) as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)         # whole or not at all (a full disk leaves no .tmp)
        raise


def _load_checkpoint(ckpt: Path, fingerprint: list, progress) -> dict | None:
    """The state saved at ``ckpt`` by a run with this ``fingerprint``, or None to start over.

    The fingerprint is read from ``<checkpoint>.json`` *before* the checkpoint is loaded: one
    of another run is an error (delete it). The checkpoint itself is loaded with
    ``weights_only=True``, which runs no pickled code; one without a fingerprint file (written
    before checkpoints were kept in this format: a full pickle) or that cannot be loaded that
    way is discarded, never loaded otherwise, and training starts over."""
    import torch

    if not ckpt.exists():
        return None

    def discard(why: str) -> None:
        ckpt.unlink(missing_ok=True)
        if progress:
            progress(f"checkpoint {ckpt} discarded ({why}); training starts over")

    try:
        written = json.loads(_fingerprint_path(ckpt).read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        discard("no readable fingerprint file beside it: an old checkpoint, kept as a pickle")
        return None
    if written != json.loads(json.dumps(fingerprint)):
        raise WorkloadError(f"training: checkpoint {ckpt} belongs to another run (model, data or settings "
                            "differ); delete it to start over")
    try:
        saved = torch.load(ckpt, weights_only=True, map_location="cpu")
    except Exception as e:                  # UnpicklingError (code in it), a corrupt file: one line
        discard(f"not loadable as plain tensors and data: {type(e).__name__}: {' '.join(str(e).split())[:120]}")
        return None
    if not isinstance(saved, dict) or saved.get("fingerprint") != fingerprint:
        discard("its content does not match its fingerprint file")
        return None
    return saved


def _fingerprint(module, n: int, batch_size: int, seed: int) -> list:
    """What a checkpoint must match to be resumed: parameter names and shapes, data size,
    batch size and seed."""
    return [[k, list(v.shape)] for k, v in module.state_dict().items()] + [n, batch_size, seed]
