"""The studies' large models: real architectures with real loading code, weights downloaded.

Weights ``pretrained`` need a network (torchvision's and Hugging Face's download servers, the
ONNX model zoo); without one the builder fails within seconds with one line that says where
from and suggests ``weights: random``. ``random`` builds the same architecture locally (seeded)
for latency-only studies: their metric is reported as not applicable (`metric_applicable`).

Data: the real sets (ImageNet, COCO/VOC, Cityscapes, MRPC) need downloads and are not wired;
``dataset()`` returns offline stand-ins for every split: crops of real photographs at the
model's input size, split by image (`workloads.photos`; unlabelled: metric ``agreement``;
calibration works) and, for text models, random token-id sentence pairs (a pair's source is
its draw: the split's seed and its index, so the splits share none).

``skippable_blocks`` (block-skipping early exit, study A) are named as `early_exit` finds them
in the exported graph (the module path the exporter writes into node names, ``/``-joined):
the later half of layer3's identity bottlenecks, ``layer3/layer3.12`` … ``layer3/layer3.22``
(ResNet-101 has 23 blocks in layer3; block 0 changes shape, 1-22 keep it). layer3 holds most of
the FLOPs and most of the blocks, and its late blocks change features least, so skipping them
trades the least quality per FLOP (cf. Veit et al., 2016, "Residual networks behave like
ensembles of relatively shallow networks").
"""
from __future__ import annotations

import os
from pathlib import Path

from ..datasets import IMAGENET_MEAN, IMAGENET_STD
from ..models import BuildContext, InputSpec, ModelEntry, register
from .common import download, need_download, offline_reason, photos, random_tokens

STUDY_VERSION = "1"
STUDY_IMAGE_VERSION = "2"       # 2: photo stand-ins split by image (workloads/photos.py)
LAYER3_LATE = tuple(f"layer3/layer3.{i}" for i in range(12, 23))

DUC_ONNX_URL = ("https://github.com/onnx/models/raw/main/validated/vision/object_detection_segmentation/"
                "duc/model/ResNet101-DUC-12.onnx")
DUC_SIZE = 800
DUC_CLASSES = 19                # Cityscapes train ids
FCN_SIZE = 520
FCN_CLASSES = 21                # Pascal VOC classes (torchvision's COCO_WITH_VOC_LABELS weights)
TEXT_LEN = 128


# ---------------------------------------------------------------- torchvision ----------

def _torchvision_weights(model: str, weights):
    """``weights.get_state_dict()`` with a fast, one-line failure when it must be downloaded
    and cannot be (torchvision keeps downloads in ``torch.hub.get_dir()/checkpoints``)."""
    import torch

    url = weights.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not cached.is_file():
        reason = offline_reason(url)
        if reason:
            raise need_download(model, url, reason)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # noqa: BLE001 - URLError, hash mismatch, truncated file
        raise need_download(model, url, str(e).splitlines()[0] if str(e) else type(e).__name__) from None


def _classifier(model: str, builder: str, weights_enum: str, weights_tag: str):
    def build(ctx: BuildContext):
        import torch
        import torchvision.models as tvm

        fn = getattr(tvm, builder)
        if ctx.weights == "random":
            torch.manual_seed(ctx.seed)
            return fn(weights=None).eval()
        weights = getattr(tvm, weights_enum)[weights_tag]
        state = _torchvision_weights(model, weights)
        net = fn(weights=None)
        net.load_state_dict(state)
        return net.eval()
    return build


def fcn_resnet101(ctx: BuildContext):
    """torchvision FCN-ResNet101 returning the ``out`` map only (no auxiliary head), upsampled
    to the input size like torchvision's forward."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torchvision.models.segmentation as seg

    if ctx.weights == "random":
        torch.manual_seed(ctx.seed)
        fcn = seg.fcn_resnet101(weights=None, weights_backbone=None, num_classes=FCN_CLASSES, aux_loss=False)
    else:
        weights = seg.FCN_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1
        state = _torchvision_weights("fcn_resnet101", weights)
        fcn = seg.fcn_resnet101(weights=None, weights_backbone=None, num_classes=FCN_CLASSES, aux_loss=True)
        fcn.load_state_dict(state)

    class FCNOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = fcn.backbone
            self.classifier = fcn.classifier

        def forward(self, image):
            x = self.classifier(self.backbone(image)["out"])
            return F.interpolate(x, size=image.shape[-2:], mode="bilinear", align_corners=False)

    return FCNOut().eval()


# ---------------------------------------------------------------- ResNet-101-DUC -------

def duc_module(classes: int = DUC_CLASSES):
    """ResNet-101 with dilated layer3/layer4 (output stride 8) and a DUC head: a 3x3 conv to
    classes·8² channels and PixelShuffle(8), i.e. per-pixel logits at the input resolution."""
    import torch.nn as nn
    import torchvision.models as tvm

    r = tvm.resnet101(weights=None, replace_stride_with_dilation=[False, True, True])

    class ResNetDUC(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1, self.relu, self.maxpool = r.conv1, r.bn1, r.relu, r.maxpool
            self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
            self.duc = nn.Sequential(nn.Conv2d(2048, classes * 64, 3, padding=1), nn.PixelShuffle(8))

        def forward(self, image):
            x = self.maxpool(self.relu(self.bn1(self.conv1(image))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.duc(x)

    return ResNetDUC()


DUC_ADAPT = "1"         # bump when _adapt_duc changes


def _adapt_duc(src: Path, folder: Path) -> None:
    """The model zoo's DUC (MXNet export, input ``data``, output (1, 19, H·W) softmax scores) as
    ``adapted.onnx`` with this entry's interface: input ``image`` (1, 3, 800, 800), output
    ``logits`` (1, 19, 800, 800) (scores; their argmax is the label map), opset raised to
    `export.OPSET` when the version converter can."""
    import onnx
    from onnx import helper, numpy_helper, version_converter

    import numpy as np

    from ..export import OPSET

    m = onnx.load(str(src))
    g = m.graph
    inits = {i.name for i in g.initializer}
    inp = next(i for i in g.input if i.name not in inits)
    old_in, old_out = inp.name, g.output[0].name
    for n in g.node:
        n.input[:] = ["image" if x == old_in else x for x in n.input]
    inp.name = "image"
    for d, v in zip(inp.type.tensor_type.shape.dim, (1, 3, DUC_SIZE, DUC_SIZE)):
        d.Clear()
        d.dim_value = v
    g.initializer.append(numpy_helper.from_array(np.array([1, DUC_CLASSES, DUC_SIZE, DUC_SIZE], np.int64),
                                                 "duc_logits_shape"))
    g.node.append(helper.make_node("Reshape", [old_out, "duc_logits_shape"], ["logits"], name="/duc/Reshape"))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT,
                                                  [1, DUC_CLASSES, DUC_SIZE, DUC_SIZE]))
    del g.value_info[:]
    try:
        m = version_converter.convert_version(m, OPSET)
    except Exception:  # noqa: BLE001 - keep the zoo's opset (12): ORT and its quantizer run it
        pass
    onnx.save(m, str(folder / "adapted.onnx"))


def resnet101_duc(ctx: BuildContext):
    """Random: `duc_module` in torch. Pretrained: the ONNX model zoo's ResNet101-DUC-HDC
    (Cityscapes, mIoU 81.9 %; the HDC dilation pattern differs from `duc_module`'s, so its
    weights cannot be loaded into it): downloaded once into the cache and returned as a path,
    which `export.export_model` checks and copies instead of exporting."""
    if ctx.weights == "random":
        import torch

        torch.manual_seed(ctx.seed)
        return duc_module().eval()
    folder = download("resnet101_duc", DUC_ONNX_URL, ctx, then=_adapt_duc, tag=DUC_ADAPT)
    return folder / "adapted.onnx"


# ---------------------------------------------------------------- transformers ---------

HF_SIZES = {          # (hidden, layers, heads, feed-forward): BERT-base, and BERT-small of Turc et al. (2019)
    "base": (768, 12, 12, 3072),
    "small": (512, 4, 8, 2048),
}


def _hf_config(kind: str, size: str = "base"):
    """The real bert-base-uncased / roberta-base (or BERT-small) geometry, built locally (no
    download)."""
    from transformers import BertConfig, RobertaConfig

    hidden, layers, heads, ffn = HF_SIZES[size]
    common = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn,
                  hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, num_labels=2)
    if kind == "bert":
        return BertConfig(vocab_size=30522, max_position_embeddings=512, type_vocab_size=2, pad_token_id=0,
                          layer_norm_eps=1e-12, **common)
    return RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                         bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5, **common)


def _hf_pretrained(model: str, hub_id: str):
    from transformers import AutoModelForSequenceClassification

    try:                                              # already in the Hugging Face cache
        return AutoModelForSequenceClassification.from_pretrained(hub_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (OSError, ValueError): download below
        pass
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    where = f"{endpoint}/{hub_id}"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise need_download(model, where, "HF_HUB_OFFLINE is set")
    reason = offline_reason(f"{where}/resolve/main/config.json")
    if reason:
        raise need_download(model, where, reason)
    try:
        return AutoModelForSequenceClassification.from_pretrained(hub_id)
    except Exception as e:  # noqa: BLE001
        raise need_download(model, where, str(e).splitlines()[0] if str(e) else type(e).__name__) from None


def _text_classifier(model: str, kind: str, hub_id: str, size: str = "base"):
    """``build`` of a sentence-pair classifier taking ``input_ids`` and ``attention_mask``
    (1, 128) and returning logits (1, 2). BERT's segment ids are derived in the graph from the
    ids (0 up to and including the first [SEP], 1 after), as its tokenizer makes them for pairs,
    so hosts need no third input."""
    def build(ctx: BuildContext):
        import torch
        import torch.nn as nn
        from transformers import AutoModelForSequenceClassification

        if ctx.weights == "random":
            torch.manual_seed(ctx.seed)
            net = AutoModelForSequenceClassification.from_config(_hf_config(kind, size))
        else:
            net = _hf_pretrained(model, hub_id)
        sep = 102 if kind == "bert" else None

        class PairClassifier(nn.Module):
            def __init__(self):
                super().__init__()
                self.model = net

            def forward(self, input_ids, attention_mask):
                extra = {}
                if sep is not None:
                    is_sep = (input_ids == sep).to(torch.int64)
                    extra["token_type_ids"] = ((torch.cumsum(is_sep, dim=1) - is_sep) > 0).to(torch.int64)
                return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits

        return PairClassifier().eval()
    return build


# ---------------------------------------------------------------- entries --------------

def _photo_data(size: int):
    return lambda split, ctx: photos(split, size, ctx.seed)


def _token_data(name: str, kind: str):
    ids = dict(vocab=30522, cls=101, sep=102, pad=0) if kind == "bert" else dict(vocab=50265, cls=0, sep=2, pad=1)
    return lambda split, ctx: random_tokens(split, name=name, length=TEXT_LEN, seed=ctx.seed, **ids)


def _image_entry(name, builder, enum, tag, description, params):
    return ModelEntry(
        name=name, task="classification", description=f"{description} ({params} params)",
        inputs=(InputSpec("image", "float32", (1, 3, 224, 224)),), output_names=("logits",),
        metric="agreement", offline=False,
        source=f"torchvision {enum}.{tag} (download.pytorch.org); data: photo crops stand in for ImageNet",
        build=_classifier(name, builder, enum, tag), dataset=_photo_data(224), version=STUDY_IMAGE_VERSION,
        num_classes=1000, skippable_blocks=LAYER3_LATE, image_norm=(IMAGENET_MEAN, IMAGENET_STD))


register(_image_entry("wide_resnet101_2", "wide_resnet101_2", "Wide_ResNet101_2_Weights", "IMAGENET1K_V2",
                      "Wide ResNet-101-2, ImageNet", "126.9 M"))
register(_image_entry("resnext101_64x4d", "resnext101_64x4d", "ResNeXt101_64X4D_Weights", "IMAGENET1K_V1",
                      "ResNeXt-101 64x4d, ImageNet", "83.5 M"))
# study B's distillation students (``distill: {student: ...}``); they are models of their own too
register(_image_entry("wide_resnet50_2", "wide_resnet50_2", "Wide_ResNet50_2_Weights", "IMAGENET1K_V2",
                      "Wide ResNet-50-2, ImageNet; student of wide_resnet101_2", "68.9 M"))
register(_image_entry("resnext50_32x4d", "resnext50_32x4d", "ResNeXt50_32X4D_Weights", "IMAGENET1K_V2",
                      "ResNeXt-50 32x4d, ImageNet; student of resnext101_64x4d", "25.0 M"))

register(ModelEntry(
    name="fcn_resnet101", task="segmentation",
    description="FCN-ResNet101 (torchvision; COCO subset with the 21 Pascal VOC classes; 'out' head only; "
                "51.8 M params)",
    inputs=(InputSpec("image", "float32", (1, 3, FCN_SIZE, FCN_SIZE)),), output_names=("out",),
    metric="agreement", offline=False,
    source="torchvision FCN_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1 (download.pytorch.org); data: photo "
           "crops stand in for COCO",
    build=fcn_resnet101, dataset=_photo_data(FCN_SIZE), version=STUDY_IMAGE_VERSION, num_classes=FCN_CLASSES,
    skippable_blocks=tuple(f"backbone/{b}" for b in LAYER3_LATE), image_norm=(IMAGENET_MEAN, IMAGENET_STD)))

register(ModelEntry(
    name="resnet101_duc", task="segmentation",
    description="ResNet-101-DUC-HDC for Cityscapes (19 classes, output stride 8, dense upsampling conv)",
    inputs=(InputSpec("image", "float32", (1, 3, DUC_SIZE, DUC_SIZE)),), output_names=("logits",),
    metric="agreement", offline=False,
    source=f"pretrained: ONNX model zoo {DUC_ONNX_URL} (used as is); random: built in torch; data: photo "
           "crops stand in for Cityscapes",
    build=resnet101_duc, dataset=_photo_data(DUC_SIZE), version=STUDY_IMAGE_VERSION, num_classes=DUC_CLASSES,
    skippable_blocks=LAYER3_LATE, image_norm=(IMAGENET_MEAN, IMAGENET_STD)))

for _name, _kind, _hub, _desc, _size in (
        ("bert_base_mrpc", "bert", "textattack/bert-base-uncased-MRPC", "BERT-base (uncased) fine-tuned on MRPC",
         "base"),
        ("roberta_base_mrpc", "roberta", "textattack/roberta-base-MRPC", "RoBERTa-base fine-tuned on MRPC", "base"),
        # study B's student of bert_base_mrpc: the pre-trained BERT-small, its pair classifier
        # untrained until distillation trains it
        ("bert_small_mrpc", "bert", "google/bert_uncased_L-4_H-512_A-8",
         "BERT-small (uncased, 4 layers, 512 wide; Turc et al. 2019), classifier to be trained; student of "
         "bert_base_mrpc", "small")):
    register(ModelEntry(
        name=_name, task="text_classification", description=f"{_desc}: paraphrase or not (2 classes)",
        inputs=(InputSpec("input_ids", "int64", (1, TEXT_LEN)), InputSpec("attention_mask", "int64", (1, TEXT_LEN))),
        output_names=("logits",), metric="agreement", offline=False,
        source=f"Hugging Face hub {_hub}; random: the real geometry configured locally; data: random token ids "
               "stand in for MRPC",
        build=_text_classifier(_name, _kind, _hub, _size), dataset=_token_data(_name, _kind), version=STUDY_VERSION,
        num_classes=2))
