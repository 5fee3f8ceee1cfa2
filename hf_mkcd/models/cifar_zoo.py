"""The CIFAR model zoo: importing this module registers the 15 ``cifar_*`` models in timm."""

from .cifar_common import CIFAR100_MEAN, CIFAR100_STD, CifarNet  # noqa: F401
from .cifar_mobilenetv2 import CifarMobileNetV2  # noqa: F401
from .cifar_resnet import CifarResNet  # noqa: F401
from .cifar_shufflenet import CifarShuffleNet  # noqa: F401
from .cifar_vgg import CifarVGG  # noqa: F401
from .cifar_wrn import CifarWideResNet  # noqa: F401

# zoo name -> section name in the community checkpoint layout (cifar_state_dict_keys.txt)
CIFAR_MODELS = {
    "cifar_resnet20": "resnet20",
    "cifar_resnet32": "resnet32",
    "cifar_resnet56": "resnet56",
    "cifar_resnet110": "resnet110",
    "cifar_resnet8x4": "resnet8x4",
    "cifar_resnet32x4": "resnet32x4",
    "cifar_wrn_16_2": "wrn_16_2",
    "cifar_wrn_40_1": "wrn_40_1",
    "cifar_wrn_40_2": "wrn_40_2",
    "cifar_vgg8": "vgg8",
    "cifar_vgg13": "vgg13",
    "cifar_resnet50": "ResNet50",
    "cifar_mobilenetv2": "MobileNetV2",
    "cifar_shufflev1": "ShuffleV1",
    "cifar_shufflev2": "ShuffleV2",
}
