"""Sample grid PNGs: layout, pixels in place, captions drawn beneath."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from microdit.errors import ConfigError
from microdit.evaluate.grid import PAD, save_grid


def test_grid_layout_and_tiles(tmp_path, emoji_set):
    images = emoji_set[0][:5]  # (5, 64, 64, 3)
    path = save_grid(images, tmp_path / "out" / "grid.png", ncols=3)
    assert path == tmp_path / "out" / "grid.png"
    grid = np.asarray(Image.open(path))
    assert grid.shape == (2 * (64 + PAD) + PAD, 3 * (64 + PAD) + PAD, 3)  # 2 rows x 3 columns
    # Tile 4 (row 1, column 1) sits at its cell, unchanged (PNG is lossless).
    y, x = PAD + (64 + PAD), PAD + (64 + PAD)
    np.testing.assert_array_equal(grid[y : y + 64, x : x + 64], images[4])
    # The sixth cell is empty background.
    assert (grid[y : y + 64, x + 64 + PAD : x + 2 * 64 + PAD] == 255).all()


def test_grid_with_captions_draws_text_below_each_tile(tmp_path, emoji_set):
    images, captions = emoji_set[0][:4], emoji_set[1][:4]
    plain = np.asarray(Image.open(save_grid(images, tmp_path / "plain.png")))
    with_text = np.asarray(Image.open(save_grid(images, tmp_path / "captioned.png", captions=captions)))
    assert with_text.shape[0] > plain.shape[0] and with_text.shape[1] == plain.shape[1]  # 2 x 2, taller
    strip = with_text[PAD + 64 : PAD + 64 + 30, PAD : PAD + 64]  # under the first tile
    assert (strip < 128).any()  # dark caption pixels on the white background
    np.testing.assert_array_equal(with_text[PAD : PAD + 64, PAD : PAD + 64], images[0])


def test_grid_rejects_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="uint8"):
        save_grid(np.zeros((2, 8, 8, 3), np.float32), tmp_path / "g.png")
    with pytest.raises(ConfigError, match="captions"):
        save_grid(np.zeros((2, 8, 8, 3), np.uint8), tmp_path / "g.png", captions=["only one"])
