"""The built-in synthetic demo data: procedural compositions whose captions are exactly true.

The stand-in for the paper's generated images (JourneyDB, DiffusionDB): an unlimited supply of
images with precise, compositional captions, e.g. "a small red circle on a blue background",
"a green triangle above a yellow square on a white background", "three purple stars on a gray
background", "a large cat face on a yellow background". Item ``i`` is a pure function of
``(demo_seed, i)`` (``numpy.random.default_rng([seed, i])``), so a set is reproducible and any
slice can be rendered independently by any Ray task. Keys are ``s<seed>-<i>``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from microdit.config.data import SourceConfig
from microdit.data.emoji import caption_of, render_emoji
from microdit.data.sources import RawItem

COLORS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (245, 215, 40),
    "green": (50, 170, 70),
    "blue": (40, 90, 220),
    "purple": (140, 60, 190),
    "pink": (240, 130, 180),
    "brown": (130, 80, 40),
    "black": (20, 20, 20),
    "white": (250, 250, 250),
    "gray": (128, 128, 128),
    "cyan": (40, 200, 210),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star", "ring")
RELATIONS = {"above": (0, -1), "below": (0, 1), "to the left of": (-1, 0), "to the right of": (1, 0)}
COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
EMOJI = {
    "🐱": ":cat_face:",
    "🐶": ":dog_face:",
    "🍎": ":red_apple:",
    "🌳": ":deciduous_tree:",
    "🚗": ":automobile:",
    "🏠": ":house:",
    "🌸": ":cherry_blossom:",
    "🐟": ":fish:",
    "🎈": ":balloon:",
    "🌞": ":sun_with_face:",
}


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, rgb: tuple) -> None:
    """One filled shape of 'radius' r centred at (cx, cy)."""
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle((cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r), fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + 0.95 * r, cy + 0.8 * r), (cx - 0.95 * r, cy + 0.8 * r)], fill=rgb)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r), (cx - 0.75 * r, cy)], fill=rgb)
    elif shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else 0.45 * r
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=rgb)
    else:  # ring
        draw.ellipse(box, outline=rgb, width=max(2, int(r * 0.3)))


def compose(seed: int, index: int, size: int) -> tuple[Image.Image, str]:
    """Image ``index`` of the seeded stream (RGB, ``size`` px) and its exact caption."""
    rng = np.random.default_rng([seed, index])
    names = list(COLORS)
    background = names[rng.integers(len(names))]
    others = [c for c in names if c != background]
    image = Image.new("RGB", (size, size), COLORS[background])
    draw = ImageDraw.Draw(image)
    kind = int(rng.integers(4))
    on_bg = f"on a {background} background"

    if kind == 0:  # one shape
        big = bool(rng.integers(2))
        color, shape = others[rng.integers(len(others))], SHAPES[rng.integers(len(SHAPES))]
        radius = size * (0.38 if big else 0.2)
        jitter = size * 0.08 * (rng.random(2) - 0.5)
        draw_shape(draw, shape, size / 2 + jitter[0], size / 2 + jitter[1], radius, COLORS[color])
        return image, f"a {'large' if big else 'small'} {color} {shape} {on_bg}"

    if kind == 1:  # two shapes in a spatial relation
        c1, c2 = (others[i] for i in rng.choice(len(others), size=2, replace=False))
        s1, s2 = SHAPES[rng.integers(len(SHAPES))], SHAPES[rng.integers(len(SHAPES))]
        relation = list(RELATIONS)[rng.integers(len(RELATIONS))]
        dx, dy = RELATIONS[relation]
        offset, radius = size * 0.24, size * 0.19
        draw_shape(draw, s1, size / 2 + dx * offset, size / 2 + dy * offset, radius, COLORS[c1])
        draw_shape(draw, s2, size / 2 - dx * offset, size / 2 - dy * offset, radius, COLORS[c2])
        return image, f"a {c1} {s1} {relation} a {c2} {s2} {on_bg}"

    if kind == 2:  # a counted group
        count = int(rng.integers(2, 5))
        color, shape = others[rng.integers(len(others))], SHAPES[rng.integers(len(SHAPES))]
        radius = size * 0.13
        for k in range(count):
            angle = 2 * math.pi * k / count + rng.random() * 0.3
            draw_shape(
                draw,
                shape,
                size / 2 + size * 0.27 * math.cos(angle),
                size / 2 + size * 0.27 * math.sin(angle),
                radius,
                COLORS[color],
            )
        return image, f"{COUNT_WORDS[count]} {color} {shape}s {on_bg}"

    glyph = list(EMOJI)[rng.integers(len(EMOJI))]  # an emoji object
    big = bool(rng.integers(2))
    side = int(size * (0.85 if big else 0.5))
    sprite = render_emoji(glyph, side).resize((side, side), Image.Resampling.BICUBIC)
    x, y = ((size - side) // 2 + (rng.random(2) - 0.5) * (size - side) * 0.5).astype(int)
    image.paste(sprite, (int(x), int(y)), sprite)
    return image, f"a {'large' if big else 'small'} {caption_of(glyph, EMOJI[glyph])} {on_bg}"


class SyntheticSource:
    """Items ``[demo_start, demo_start + demo_count)`` of the seeded procedural stream."""

    def __init__(self, config: SourceConfig, image_size: int = 64) -> None:
        self.config = config
        self.render_size = max(64, 2 * image_size)

    def refs(self) -> list[dict[str, Any]]:
        seed, start = self.config.demo_seed, self.config.demo_start
        return [{"key": f"s{seed}-{i}", "index": i} for i in range(start, start + self.config.demo_count)]

    def load(self, refs: list[dict[str, Any]]) -> Iterator[RawItem]:
        for ref in refs:
            image, caption = compose(self.config.demo_seed, ref["index"], self.render_size)
            yield RawItem(ref["key"], image, caption)
