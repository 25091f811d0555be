"""Model zoo of dataset distillation (DC/DSA/DM/MTT) behind one registry.

``create_model(name, in_channels, num_classes, image_size, **kwargs)`` builds a model on the CPU
from the global torch RNG (it never seeds and never moves to a device; wrap the call in
``torch.random.fork_rng()`` + ``torch.manual_seed`` for reproducible weights). ``list_models()``
gives the registered names. ``datadistill.models.functional`` holds the flat-parameter forward
used by the unrolled trajectory-matching student.

Example:
    >>> from datadistill.models import create_model
    >>> net = create_model("convnet", in_channels=3, num_classes=10, image_size=32)
    >>> type(net).__name__
    'ConvNet'
"""

# Importing the architecture modules registers their names: the registry is complete as soon
# as this package is imported (INFER's CIFAR and ImageNet teachers included).
from datadistill.models import convnet, imagenet_teachers, resnet, small, teachers  # noqa: F401
from datadistill.models.convnet import ConvNet
from datadistill.models.functional import (
    ParamSpec,
    flatten_params,
    functional_forward,
    load_flat_params,
    param_spec,
)
from datadistill.models.registry import create_model, list_models, register_model
from datadistill.models.resnet import ResNet
from datadistill.models.small import MLP, VGG, AlexNet, LeNet

__all__ = [
    "MLP",
    "VGG",
    "AlexNet",
    "ConvNet",
    "LeNet",
    "ParamSpec",
    "ResNet",
    "create_model",
    "flatten_params",
    "functional_forward",
    "list_models",
    "load_flat_params",
    "param_spec",
    "register_model",
]
