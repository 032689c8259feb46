"""Image decoding and the paper's preprocessing, with skip reasons instead of crashes.

Preprocessing (SPEC §3): convert to RGB (transparent pixels composited over white, so emoji and
logos do not turn black), resize the shorter side to R (bicubic with antialiasing: Pillow's
resampling filters widen their support when downscaling), center-crop R x R, map to [-1, 1].

A bad item raises ``SkipItem(reason)``; ``prepare`` counts reasons and moves on. Reasons used
here: ``undecodable`` (not an image Pillow can open or decode), ``truncated`` (the file ends
early), ``too_small`` (shorter side below ``min_side``), ``too_large`` (a decompression bomb).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

UNDECODABLE, TRUNCATED, TOO_SMALL, TOO_LARGE = "undecodable", "truncated", "too_small", "too_large"
NO_CAPTION = "no_caption"


class SkipItem(Exception):
    """An item that cannot become a training row; ``reason`` is the counter it lands in."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def decode_image(data: bytes | Image.Image) -> Image.Image:
    """Bytes (any Pillow format) or an image -> a fully loaded RGB image."""
    if isinstance(data, Image.Image):
        image = data
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
                image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise SkipItem(TOO_LARGE, str(err)) from err
        except UnidentifiedImageError as err:
            raise SkipItem(UNDECODABLE, str(err)) from err
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            text = str(err).lower()
            reason = TRUNCATED if ("truncat" in text or isinstance(err, EOFError)) else UNDECODABLE
            raise SkipItem(reason, str(err)) from err
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB image; transparency is composited over a white background."""
    if "A" in image.mode or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """Shorter side -> ``size`` (bicubic, antialiased), center crop -> (size, size, 3) uint8."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = (
        image.resize((new_w, new_h), Image.Resampling.BICUBIC) if (new_w, new_h) != image.size else image
    )
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)


def check_size(image: Image.Image, min_side: int) -> None:
    if min(image.size) < min_side:
        raise SkipItem(TOO_SMALL, f"{image.size[0]}x{image.size[1]} < {min_side}")


def to_model_range(pixels: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1]."""
    tensor = torch.tensor(pixels).permute(0, 3, 1, 2).float()  # (N, 3, H, W); copies read-only input
    return tensor / 127.5 - 1.0


def from_model_range(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8; the inverse of ``to_model_range``."""
    scaled = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).cpu().numpy()
