"""The batched augmentation backend: shapes, determinism per item seed, and agreement with the formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from ssl_zoo.config import CONF_DIR
from ssl_zoo.errors import ConfigError
from ssl_zoo.transforms.batched import BatchedViews, crop_boxes, per_sample_uniforms
from ssl_zoo.transforms.config import AugmentationConfig, CropGroupConfig


def aug(name: str) -> AugmentationConfig:
    node = OmegaConf.load(CONF_DIR / "augmentation" / f"{name}.yaml")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(AugmentationConfig), node))


def images(b=6, c=3, s=20):
    return torch.randint(0, 256, (b, c, s, s), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["simclr", "moco_v2", "byol", "multicrop", "grey"])
def test_views_have_the_pipeline_sizes(name):
    cfg = aug(name)
    channels = 1 if name == "grey" else 3
    views = BatchedViews(cfg, 32, [0.5] * channels, [0.25] * channels, channels)(images(c=channels), range(6))
    sizes = [g.resolve_size(32) for g in cfg.crops for _ in range(g.num)]
    assert [tuple(v.shape) for v in views] == [(6, channels, s, s) for s in sizes]
    assert all(torch.isfinite(v).all() for v in views)


def test_views_are_a_pure_function_of_the_item_seeds():
    t = BatchedViews(aug("simclr"), 16, [0.5] * 3, [0.25] * 3, 3)
    x = images()
    a, b = t(x, [1, 2, 3, 4, 5, 6]), t(x, [1, 2, 3, 4, 5, 6])
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    # an item's views do not depend on its neighbours in the batch
    c = t(x[[1, 0]], [2, 1])
    assert torch.equal(c[0][0], a[0][1]) and torch.equal(c[1][1], a[1][0])
    d = t(x, [7, 8, 9, 10, 11, 12])
    assert not torch.equal(a[0], d[0])


def test_without_augmentation_a_view_is_the_resized_image():
    plain = CropGroupConfig(num=1, scale=[1.0, 1.0], ratio=[1.0, 1.0], hflip_prob=0, color_jitter_prob=0,
                            grayscale_prob=0, blur_prob=0, solarize_prob=0)
    t = BatchedViews(AugmentationConfig(crops=[plain]), 20, [0.0] * 3, [1.0] * 3, 3)
    x = images()
    (view,) = t(x, range(6))
    torch.testing.assert_close(view, x.float() / 255, atol=1e-5, rtol=0)


def test_solarize_always_inverts_bright_pixels():
    g = CropGroupConfig(num=1, scale=[1.0, 1.0], ratio=[1.0, 1.0], hflip_prob=0, color_jitter_prob=0,
                        grayscale_prob=0, blur_prob=0, solarize_prob=1.0, solarize_threshold=0.5)
    (view,) = BatchedViews(AugmentationConfig(crops=[g]), 20, [0.0] * 3, [1.0] * 3, 3)(images(), range(6))
    x = images().float() / 255
    torch.testing.assert_close(view, torch.where(x >= 0.5, 1 - x, x), atol=1e-5, rtol=0)


def test_always_flipping_mirrors_the_image():
    g = CropGroupConfig(num=1, scale=[1.0, 1.0], ratio=[1.0, 1.0], hflip_prob=1.0, color_jitter_prob=0,
                        grayscale_prob=0, blur_prob=0)
    (view,) = BatchedViews(AugmentationConfig(crops=[g]), 20, [0.0] * 3, [1.0] * 3, 3)(images(), range(6))
    torch.testing.assert_close(view, images().float().flip(-1) / 255, atol=1e-5, rtol=0)


def test_blur_preserves_a_constant_image_and_smooths_noise():
    g = CropGroupConfig(num=1, scale=[1.0, 1.0], ratio=[1.0, 1.0], hflip_prob=0, color_jitter_prob=0,
                        grayscale_prob=0, blur_prob=1.0, blur_sigma=[1.0, 1.0])
    t = BatchedViews(AugmentationConfig(crops=[g]), 20, [0.0] * 3, [1.0] * 3, 3)
    flat = torch.full((2, 3, 20, 20), 100, dtype=torch.uint8)
    torch.testing.assert_close(t(flat, [0, 1])[0], flat.float() / 255, atol=1e-5, rtol=0)
    noisy = images(2)
    assert t(noisy, [0, 1])[0].std() < (noisy.float() / 255).std() * 0.7


def test_crop_boxes_fit_the_image_and_respect_the_area_range():
    u = per_sample_uniforms(range(500), 30)
    boxes = crop_boxes(u, 28, 28, [0.2, 1.0], [3 / 4, 4 / 3])
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 28).all() and (boxes[:, 3] <= 28).all()
    area = w * h / 28**2
    assert area.min() >= 0.2 - 0.05 and area.max() <= 1.0
    assert area.std() > 0.1  # the crops really vary


def test_equalize_is_refused_with_a_clear_key():
    g = CropGroupConfig(num=2, equalize_prob=0.5)
    with pytest.raises(ConfigError, match="equalize_prob"):
        BatchedViews(AugmentationConfig(crops=[g]), 32, [0.5] * 3, [0.25] * 3, 3)


def test_grey_images_stay_grey_and_normalised():
    views = BatchedViews(aug("grey"), 32, [0.286], [0.353], 1)(images(c=1, s=28), range(6))
    assert views[0].shape == (6, 1, 32, 32)
    x = (images(c=1, s=28).float() / 255 - 0.286) / 0.353
    assert abs(views[0].mean() - F.interpolate(x, size=32).mean()) < 0.5
