"""Model families, one file each; named variants live in ``conf/model/*.yaml``."""

from ablab.models.lenet import LeNet5
from ablab.models.resnet import ResNet

__all__ = ["LeNet5", "ResNet"]
