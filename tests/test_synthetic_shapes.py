"""The synthetic dataset's images: each class is its named shape, drawn in a colour that
contrasts with a background of the opposite lightness."""

from __future__ import annotations

import numpy as np
import pytest
from zoo_datasets.synthetic import _shape_mask, generate

# (dx, dy) in radii from the centre (y grows downwards), inside or not
POINTS = {
    "square": [((0.79, 0.79), True), ((0.81, 0.0), False), ((0.0, -0.81), False)],
    "circle": [((0.7, 0.7), True), ((0.72, 0.72), False), ((0.0, 0.99), True)],
    "triangle": [((0.0, -0.99), True), ((0.3, -0.9), False), ((0.5, 0.79), True),
                 ((0.0, 0.81), False), ((0.0, -1.01), False), ((0.9, 0.79), True),
                 ((1.0, 0.79), False)],
    "cross": [((0.29, 0.99), True), ((0.31, 0.5), False), ((0.99, 0.29), True),
              ((0.5, 0.31), False), ((0.0, 1.01), False), ((1.01, 0.0), False)],
    "ring": [((0.56, 0.0), True), ((0.54, 0.0), False), ((0.0, 0.99), True),
             ((1.01, 0.0), False), ((-0.35, -0.35), False), ((0.6, -0.6), True)],
    "diamond": [((0.49, 0.49), True), ((0.51, 0.51), False), ((-0.99, 0.0), True),
                ((0.0, -1.01), False)],
}


@pytest.mark.parametrize("kind", sorted(POINTS))
def test_each_class_is_its_named_shape(kind: str) -> None:
    r = 10.0
    dx = np.array([p[0][0] * r for p in POINTS[kind]])
    dy = np.array([p[0][1] * r for p in POINTS[kind]])
    inside = _shape_mask(kind, dx, dy, np.full(len(dx), r))
    assert inside.tolist() == [p[1] for p in POINTS[kind]]


def test_an_unknown_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="hexagon"):
        _shape_mask("hexagon", np.zeros(1), np.zeros(1), np.ones(1))


def test_shape_and_background_contrast_and_half_the_images_are_light() -> None:
    images, _ = generate(400, 2, 32, 32, 3, seed=5, noise=0.0)
    background, shape = [], []
    for image in images:  # without noise: two colours, the background the more common
        colours, counts = np.unique(image.reshape(3, -1).T, axis=0, return_counts=True)
        assert len(colours) == 2
        order = np.argsort(-counts)
        background.append(colours[order[0]] / 255)
        shape.append(colours[order[1]] / 255)
    bg, fg = np.array(background), np.array(shape)
    light = bg.mean(1) > fg.mean(1)
    assert 0.4 < light.mean() < 0.6
    for values in (bg, fg):  # dark colours from [0, 0.4], light ones from [0.6, 1]
        assert ((values <= 0.4 + 1e-3) | (values >= 0.6 - 1e-3)).all()
    dark_side = np.where(light[:, None], fg, bg)
    light_side = np.where(light[:, None], bg, fg)
    assert (dark_side <= 0.4 + 1e-3).all() and (light_side >= 0.6 - 1e-3).all()
    assert abs(dark_side.mean() - 0.2) < 0.03 and abs(light_side.mean() - 0.8) < 0.03


def test_the_default_noise_is_a_tenth() -> None:
    default = generate(8, 3, 16, 16, 3, seed=1)[0]
    assert np.array_equal(default, generate(8, 3, 16, 16, 3, seed=1, noise=0.1)[0])
    assert not np.array_equal(default, generate(8, 3, 16, 16, 3, seed=1, noise=0.2)[0])


def test_noisy_pixels_saturate_at_black_and_white_and_never_wrap() -> None:
    images, _ = generate(64, 2, 16, 16, 3, seed=3, noise=5.0)
    values = images.ravel()
    # noise of five times the range: about half the pixels clip at each end
    assert (values == 0).mean() > 0.3 and (values == 255).mean() > 0.3


def test_the_loader_defaults_to_32_pixels_and_needs_a_validation_split() -> None:
    from zoo_datasets.synthetic import SyntheticOptions, load

    from zoo.errors import DataError
    from zoo.spec.dataset import DatasetRequest

    options = SyntheticOptions(size=40)
    data = load(DatasetRequest(val_split=0.25), options)
    assert data.train.images.shape[1:] == (3, 32, 32) and len(data.val) == 8  # 2 per class
    with pytest.raises(DataError, match=r"^the synthetic dataset needs a validation split: "
                                        r"val_split must be in \(0, 1\), got 0\.0$"):
        load(DatasetRequest(val_split=0.0), options)
