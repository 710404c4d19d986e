"""The offline models trained here on Fashion-MNIST: a small CNN classifier and a small U-Net.

Both train once with `training.fit` (seeded; 2 torch threads unless ``$TESTBED_TRAIN_THREADS``)
and their weights are cached (cache kind ``weights``); ``weights: random`` skips training.
"""
from __future__ import annotations

from ..models import BuildContext, InputSpec, ModelEntry, register
from .common import train_threads, trained

CNN_VERSION = "1"
SEGNET_VERSION = "1"
CNN_EPOCHS = 4          # 91.5 % test accuracy; 53-88 s on 2 cores (idle or shared)
SEGNET_EPOCHS = 3       # mIoU 0.548 on the 2,000 eval composites; 165-200 s on 2 cores


def _cbr(nn, cin: int, cout: int, dilation: int = 1) -> list:
    return [nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


def cnn_module(width: int = 16):
    """Three conv stages (28→14→7→3 px, 16/32/64 channels) and an MLP head; stage boundaries are
    where exit heads attach."""
    import torch.nn as nn

    class FashionCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.stage1 = nn.Sequential(*_cbr(nn, 1, width), nn.MaxPool2d(2))
            self.stage2 = nn.Sequential(*_cbr(nn, width, 2 * width), nn.MaxPool2d(2))
            self.stage3 = nn.Sequential(*_cbr(nn, 2 * width, 4 * width), nn.MaxPool2d(2))
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * width * 9, 128), nn.ReLU(inplace=True),
                                      nn.Linear(128, 10))

        def forward(self, image):
            return self.head(self.stage3(self.stage2(self.stage1(image))))

    return FashionCNN()


def segnet_module(width: int = 16, classes: int = 11):
    """A small U-Net: encoder 64→32→16→8 px (16/32/64/128 channels, a dilated conv at the
    bottom for a receptive field covering a whole 28-px item), transposed-conv decoder with
    additive skips, 1×1 classifier to 11 classes at full resolution."""
    import torch.nn as nn

    w = width

    class FashionSegNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc1 = nn.Sequential(*_cbr(nn, 1, w))
            self.enc2 = nn.Sequential(nn.MaxPool2d(2), *_cbr(nn, w, 2 * w))
            self.enc3 = nn.Sequential(nn.MaxPool2d(2), *_cbr(nn, 2 * w, 4 * w))
            self.bottom = nn.Sequential(nn.MaxPool2d(2), *_cbr(nn, 4 * w, 8 * w), *_cbr(nn, 8 * w, 8 * w, 2))
            self.up3 = nn.ConvTranspose2d(8 * w, 4 * w, 2, stride=2)
            self.dec3 = nn.Sequential(*_cbr(nn, 4 * w, 4 * w))
            self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
            self.dec2 = nn.Sequential(*_cbr(nn, 2 * w, 2 * w))
            self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
            self.dec1 = nn.Sequential(*_cbr(nn, w, w))
            self.classifier = nn.Conv2d(w, classes, 1)

        def forward(self, image):
            e1 = self.enc1(image)
            e2 = self.enc2(e1)
            e3 = self.enc3(e2)
            x = self.dec3(self.up3(self.bottom(e3)) + e3)
            x = self.dec2(self.up2(x) + e2)
            x = self.dec1(self.up1(x) + e1)
            return self.classifier(x)

    return FashionSegNet()


def _train_cnn(module, ctx: BuildContext) -> dict:
    from .. import datasets
    from ..training import fit

    return fit(module, datasets.fashion_mnist("train"), input_names=["image"], epochs=CNN_EPOCHS, batch_size=128,
               lr=3e-3, seed=ctx.seed, validate=datasets.fashion_mnist("calibration"), threads=train_threads(),
               progress=lambda m: ctx.progress(f"fmnist_cnn: {m}"))


def _train_segnet(module, ctx: BuildContext) -> dict:
    from .. import datasets
    from ..training import fit

    return fit(module, datasets.fashion_segmentation("train"), input_names=["image"], epochs=SEGNET_EPOCHS,
               batch_size=32, lr=3e-3, seed=ctx.seed, validate=datasets.fashion_segmentation("calibration").take(500),
               threads=train_threads(), progress=lambda m: ctx.progress(f"fmnist_segnet: {m}"))


def _fashion(split: str, ctx: BuildContext):
    from .. import datasets
    return datasets.fashion_mnist(split)


def _fashion_seg(split: str, ctx: BuildContext):
    from .. import datasets
    return datasets.fashion_segmentation(split)


register(ModelEntry(
    name="fmnist_cnn", task="classification",
    description="small CNN (3 conv stages + MLP head, 0.1 M params) trained here on Fashion-MNIST",
    inputs=(InputSpec("image", "float32", (1, 1, 28, 28)),), output_names=("logits",),
    metric="accuracy", offline=True,
    source="trained here (once, cached) on Fashion-MNIST from the Debian package dataset-fashion-mnist",
    build=lambda ctx: trained("fmnist_cnn", CNN_VERSION, ctx, cnn_module, _train_cnn),
    dataset=_fashion, version=CNN_VERSION, num_classes=10, trained_on=("train",)))

register(ModelEntry(
    name="fmnist_segnet", task="segmentation",
    description="small U-Net (0.34 M params) trained here on 64x64 Fashion-MNIST composites, 11 classes",
    inputs=(InputSpec("image", "float32", (1, 1, 64, 64)),), output_names=("logits",),
    metric="miou", offline=True,
    source="trained here (once, cached) on composites of Fashion-MNIST items (dataset-fashion-mnist)",
    build=lambda ctx: trained("fmnist_segnet", SEGNET_VERSION, ctx, segnet_module, _train_segnet),
    dataset=_fashion_seg, version=SEGNET_VERSION, num_classes=11, trained_on=("train",)))
