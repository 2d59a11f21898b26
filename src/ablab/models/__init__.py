"""Model families, one file each; named variants live in ``conf/model/*.yaml``.

Each family is imported when it is first used (``ablab.models.ResNet``, as a config's
``_target_`` reaches it): a run imports the family it trains, not timm and every block of the
zoo (about a second of start-up for LeNet-5).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ablab.models.alexnet import AlexNet
    from ablab.models.autoencoder import ConvAutoencoder, MLPAutoencoder
    from ablab.models.densenet import DenseNet
    from ablab.models.googlenet import GoogLeNet
    from ablab.models.lenet import LeNet5
    from ablab.models.mobilenet import MobileNet, MobileNetV3
    from ablab.models.repvgg import RepVGG
    from ablab.models.resnet import ResNet
    from ablab.models.rnn import RecurrentNet
    from ablab.models.shufflenet import ShuffleNetV2
    from ablab.models.squeezenet import SqueezeNet
    from ablab.models.timm_backbone import timm_model
    from ablab.models.unet import UNet
    from ablab.models.vgg import VGG
    from ablab.models.vit import ViT

#: public name -> the module that defines it
FAMILIES = {
    "AlexNet": "alexnet",
    "ConvAutoencoder": "autoencoder",
    "DenseNet": "densenet",
    "GoogLeNet": "googlenet",
    "LeNet5": "lenet",
    "MLPAutoencoder": "autoencoder",
    "MobileNet": "mobilenet",
    "MobileNetV3": "mobilenet",
    "RecurrentNet": "rnn",
    "RepVGG": "repvgg",
    "ResNet": "resnet",
    "ShuffleNetV2": "shufflenet",
    "SqueezeNet": "squeezenet",
    "timm_model": "timm_backbone",
    "UNet": "unet",
    "VGG": "vgg",
    "ViT": "vit",
}


def __getattr__(name: str) -> Any:
    if name not in FAMILIES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{FAMILIES[name]}"), name)


__all__ = [
    "VGG",
    "AlexNet",
    "ConvAutoencoder",
    "DenseNet",
    "GoogLeNet",
    "LeNet5",
    "MLPAutoencoder",
    "MobileNet",
    "MobileNetV3",
    "RecurrentNet",
    "RepVGG",
    "ResNet",
    "ShuffleNetV2",
    "SqueezeNet",
    "UNet",
    "ViT",
    "timm_model",
]
