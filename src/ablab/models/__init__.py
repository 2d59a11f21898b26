"""Model families, one file each; named variants live in ``conf/model/*.yaml``."""

from ablab.models.lenet import LeNet5

__all__ = ["LeNet5"]
