"""Static baselines. Importing this package registers every model in it."""

from baselines.static import (  # noqa: F401
    cifar_mobilenetv2,
    cifar_resnet,
    cifar_vgg,
    imagenet,
    small_cnn,
)
