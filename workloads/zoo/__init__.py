"""The built-in models. Importing this package registers every entry (`models.models()`).

Offline (weights and data on a fresh machine, no network):

- ``fmnist_cnn`` / ``fmnist_segnet``: trained here on Fashion-MNIST (`zoo.fashion`);
- ``efficientnet_lite0`` / ``minilm_sentiment``: pretrained weights from pip packages
  (`zoo.pretrained`).

Studies (`zoo.studies`; ``pretrained`` weights need a download, ``random`` works offline):
``wide_resnet101_2``, ``resnext101_64x4d``, ``fcn_resnet101``, ``resnet101_duc``,
``bert_base_mrpc``, ``roberta_base_mrpc``.

Nothing here imports torch, torchvision or transformers at import time.
"""
from __future__ import annotations

from . import fashion, pretrained, studies  # noqa: F401 - register the entries
from .common import metric_applicable, training_history

__all__ = ["metric_applicable", "training_history"]
