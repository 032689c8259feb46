"""Sample grids: generated images tiled into one PNG, each optionally captioned beneath.

FID says how far the samples are from the data; a grid lets a person see *what* is wrong
(colour casts, no structure, caption ignored). Pillow only, so it runs on any worker; the
caption is wrapped under its tile with Pillow's built-in font, no font file needed.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from microdit.errors import ConfigError

PAD = 4  # pixels between tiles and around the grid
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (20, 20, 20)


def _caption_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable default font (Pillow >= 10.1)
    except TypeError:
        return ImageFont.load_default()


def save_grid(
    images: np.ndarray,
    path: str | Path,
    captions: Sequence[str] | None = None,
    ncols: int | None = None,
    caption_lines: int = 3,
    font_size: int = 10,
    min_tile: int = 96,
) -> Path:
    """Tile uint8 (N, H, W, 3) images into a PNG at ``path`` and return the path.

    ``ncols`` defaults to a near-square layout. With ``captions`` (one per image), each tile
    gets up to ``caption_lines`` wrapped lines of its caption below it; longer ones end in '…'.
    Tiles smaller than ``min_tile`` pixels are enlarged by an integer factor (nearest
    neighbour, so no detail is invented): 32 px demo samples are unreadable otherwise.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ConfigError(
            f"grid images: expected non-empty uint8 (N, H, W, 3), got {images.dtype} {images.shape}"
        )
    if captions is not None and len(captions) != len(images):
        raise ConfigError(
            f"grid: {len(captions)} captions for {len(images)} images; give one per image or none"
        )
    factor = max(1, min_tile // max(images.shape[1:3]))
    if factor > 1:
        images = images.repeat(factor, axis=1).repeat(factor, axis=2)  # (N, H*f, W*f, 3)
    n, h, w, _ = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    if ncols < 1:
        raise ConfigError(f"grid ncols: must be >= 1, got {ncols}")
    nrows = math.ceil(n / ncols)

    font = _caption_font(font_size)
    line_height = font_size + 2
    chars_per_line = max(4, int(w / (0.6 * font_size)))  # average glyph ≈ 0.6 em wide
    text_height = caption_lines * line_height + PAD if captions is not None else 0
    cell_h, cell_w = h + text_height + PAD, w + PAD

    canvas = Image.new("RGB", (ncols * cell_w + PAD, nrows * cell_h + PAD), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        row, col = divmod(i, ncols)
        x, y = PAD + col * cell_w, PAD + row * cell_h
        canvas.paste(Image.fromarray(images[i]), (x, y))
        if captions is not None:
            lines = textwrap.wrap(str(captions[i]), chars_per_line) or [""]
            if len(lines) > caption_lines:
                lines = lines[:caption_lines]
                lines[-1] = lines[-1][: max(0, chars_per_line - 1)] + "…"
            for j, line in enumerate(lines):
                draw.text((x, y + h + 2 + j * line_height), line, fill=TEXT_COLOR, font=font)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path
