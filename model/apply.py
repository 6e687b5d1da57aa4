"""Applications of a trained DPN (the paper's section 6.6): blur maps, blur degree, DoF magnification.

Images go in as files or RGB arrays at any size; the network sees them resized to its input size
(a multiple of 16) and its map is resized back, so every output has the image's own size.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

from blurset.errors import InputError
from blurset.model.dpn import DPN, SIZE_MULTIPLE

DEFAULT_SHAKE_THRESHOLD = 0.6  # S above this: the whole frame is blurred, e.g. camera shake


class ImageReadError(InputError):
    """An input file that is not a readable image."""


class ImageWriteError(InputError):
    """An output file name whose extension names no image format PIL can write."""


def image_format(path: str | os.PathLike) -> str:
    """The PIL format that a file name's extension names, if PIL can write it; else
    :class:`ImageWriteError` (check an output name before the work that fills it)."""
    path = Path(path)
    Image.init()
    extensions = Image.registered_extensions()
    fmt = extensions.get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        writable = sorted(e for e, f in extensions.items() if f in Image.SAVE)
        raise ImageWriteError(f"{path}: cannot write an image with the extension "
                              f"{path.suffix or '(none)'!r}; use .png, .jpg or .tif (PIL writes "
                              f"{', '.join(writable[:12])}, …)")
    return fmt


def write_rgb(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Save an RGB uint8 ``(H, W, 3)`` array in the format its file extension names (its folder
    is created); an extension PIL cannot write is refused before anything is written."""
    fmt = image_format(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format=fmt)
    return path


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as RGB uint8 ``(H, W, 3)``, EXIF orientation applied."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            return np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{path}: refused, too many pixels ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path}: not a readable image ({e})") from None


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@torch.no_grad()
def predict_maps(model: DPN, images: Iterable[np.ndarray], *, input_size: int = 352,
                 batch_size: int = 4, device: str | torch.device | None = None) -> list[np.ndarray]:
    """Blur maps in ``[0, 1]`` (1 = blurred), each ``(H, W)`` float32 at its image's size."""
    if input_size % SIZE_MULTIPLE:
        raise ValueError(f"input_size {input_size} is not a multiple of {SIZE_MULTIPLE}; use "
                         f"{max(SIZE_MULTIPLE, round(input_size / SIZE_MULTIPLE) * SIZE_MULTIPLE)}")
    device = torch.device(device) if device else next(model.parameters()).device
    model.eval()
    images = list(images)
    maps: list[np.ndarray] = []
    for batch in _batches(images, batch_size):
        x = np.stack([cv2.resize(im, (input_size, input_size), interpolation=cv2.INTER_AREA)
                      for im in batch])  # (B, S, S, 3) uint8
        t = torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, S, S)
        p = model.predict(t)[:, 0].float().cpu().numpy()  # (B, S, S)
        for im, m in zip(batch, p, strict=True):
            h, w = im.shape[:2]
            maps.append(np.clip(cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR), 0, 1))
    return maps


def map_to_png(blur_map: np.ndarray) -> Image.Image:
    """A ``[0, 1]`` blur map as an 8-bit grey image (255 = blurred, the masks' polarity)."""
    return Image.fromarray(np.round(np.clip(blur_map, 0, 1) * 255).astype(np.uint8), "L")


@dataclass(frozen=True)
class BlurDegree:
    path: str
    s: float  # mean of the blur map: the paper's blur degree S
    blurred_fraction: float  # share of pixels with map >= 0.5
    camera_shake: bool  # s > threshold


def blur_degree(path: str, blur_map: np.ndarray, threshold: float = DEFAULT_SHAKE_THRESHOLD
                ) -> BlurDegree:
    """The paper's blur degree ``S = mean(map)``; above ``threshold`` the frame counts as shaken."""
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold {threshold} must lie in [0, 1]")
    s = float(blur_map.mean())
    return BlurDegree(path, round(s, 4), round(float((blur_map >= 0.5).mean()), 4), s > threshold)


def dof_magnify(image: np.ndarray, blur_map: np.ndarray, *, strength: float = 8.0,
                feather: float = 0.02) -> np.ndarray:
    """Depth-of-field magnification: the in-focus region as it is, the rest blurred more.

    ``strength``: sigma of the extra Gaussian blur in pixels at 512 px of the longer side (scaled
    with the image). ``feather``: sigma of the soft edge, as a share of the longer side. The blend
    weight is the blur map smoothed by the feather: 0 keeps the pixel, 1 takes the blurred one.
    """
    if image.shape[:2] != blur_map.shape:
        raise ValueError(f"blur map {blur_map.shape} does not match the image {image.shape[:2]}")
    if strength <= 0 or feather < 0:
        raise ValueError(f"strength {strength} must be > 0 and feather {feather} >= 0")
    side = max(image.shape[:2])
    sigma = strength * side / 512
    blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
    alpha = blur_map.astype(np.float32)
    if feather > 0:
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigmaX=feather * side, borderType=cv2.BORDER_REFLECT)
    alpha = np.clip(alpha, 0, 1)[..., None]  # (H, W, 1)
    out = image.astype(np.float32) * (1 - alpha) + blurred.astype(np.float32) * alpha
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def output_name(path: str | os.PathLike, out_dir: Path, suffix: str = ".png") -> Path:
    return out_dir / (Path(path).stem + suffix)
