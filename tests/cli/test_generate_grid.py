"""`ramm generate`'s grid shows small images enlarged to GRID_MIN_SIDE and large ones at their own size."""
import numpy as np
import pytest

from ramm.cli.generate import GRID_MIN_SIDE, grid


@pytest.mark.parametrize("side,scale", [(32, 4), (48, 3), (128, 1), (256, 1)])
def test_grid_scale_follows_the_image_size(side, scale):
    images = [np.zeros((side, side, 3), np.uint8)] * 2
    out = grid(images, pad=0)
    assert out.shape == (side * scale, 2 * side * scale, 3)
    assert min(out.shape[:2]) >= min(GRID_MIN_SIDE, side * scale)


def test_grid_keeps_an_explicit_scale():
    assert grid([np.zeros((32, 32, 3), np.uint8)], pad=0, scale=2).shape == (64, 64, 3)
