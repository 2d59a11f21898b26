"""Model families, one file each; named variants live in ``conf/model/*.yaml``."""

from ablab.models.alexnet import AlexNet
from ablab.models.densenet import DenseNet
from ablab.models.googlenet import GoogLeNet
from ablab.models.lenet import LeNet5
from ablab.models.mobilenet import MobileNet, MobileNetV3
from ablab.models.repvgg import RepVGG
from ablab.models.resnet import ResNet
from ablab.models.shufflenet import ShuffleNetV2
from ablab.models.squeezenet import SqueezeNet
from ablab.models.timm_backbone import timm_model
from ablab.models.vgg import VGG
from ablab.models.vit import ViT

__all__ = [
    "VGG",
    "AlexNet",
    "DenseNet",
    "GoogLeNet",
    "LeNet5",
    "MobileNet",
    "MobileNetV3",
    "RepVGG",
    "ResNet",
    "ShuffleNetV2",
    "SqueezeNet",
    "ViT",
    "timm_model",
]
