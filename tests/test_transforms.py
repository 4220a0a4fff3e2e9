"""View pipelines: every recipe builds, views have the promised count/shape/dtype, sizes resolve,
randomness is torch's seeded generator only, bad values name their dotted key, evaluation is fixed."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ssl_zoo.errors import ConfigError
from ssl_zoo.transforms import (
    AugmentationConfig,
    CropGroupConfig,
    blur_kernel_size,
    build_eval_transform,
    build_view_transform,
    to_augmentation_config,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "augmentation"
RECIPES = sorted(p.stem for p in CONF.glob("*.yaml"))
VIEWS = {"simclr": 2, "moco_v1": 2, "moco_v2": 2, "byol": 2, "multicrop": 8, "grey": 2}

# A crop group that changes nothing: full-image crop at the image's own size, every operation off.
IDENTITY = dict(num=1, scale=[1.0, 1.0], ratio=[1.0, 1.0], hflip_prob=0.0, color_jitter_prob=0.0,
                grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0, equalize_prob=0.0)


def recipe(name: str) -> AugmentationConfig:
    """conf/augmentation/<name>.yaml as the lead's loader sees it: merged into the schema, validated."""
    raw = OmegaConf.load(CONF / f"{name}.yaml")
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(AugmentationConfig), raw))
    cfg.validate()
    return cfg


def random_image(size: int, mode: str, seed: int = 0, width: int | None = None) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size, width or size) + ((3,) if mode == "RGB" else ())
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def stats(channels: int) -> tuple[list[float], list[float]]:
    return [0.45] * channels, [0.25] * channels


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_paper_recipes_give_their_number_of_views(name):
    assert recipe(name).num_views == VIEWS[name]


@pytest.mark.parametrize("name", RECIPES)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_recipe_gives_its_views_as_normalised_float_tensors_of_the_right_shape(name, channels):
    cfg = recipe(name)
    assert cfg.name == name
    for image_size in (28, 32, 64):
        transform = build_view_transform(cfg, image_size, *stats(channels), channels)
        assert transform.num_views == cfg.num_views == len(transform.sizes) == sum(g.num for g in cfg.crops)
        for mode in ("RGB", "L"):
            views = transform(random_image(image_size, mode))
            assert len(views) == cfg.num_views
            for view, size in zip(views, transform.sizes):
                assert type(view) is torch.Tensor and view.dtype == torch.float32
                assert view.shape == (channels, size, size)
                assert torch.isfinite(view).all()


def test_recipes_keep_their_papers_settings():
    simclr = recipe("simclr").crops[0]
    assert (simclr.num, simclr.scale, simclr.color_jitter_prob) == (2, [0.08, 1.0], 0.8)
    assert (simclr.brightness, simclr.contrast, simclr.saturation, simclr.hue) == (0.8, 0.8, 0.8, 0.2)
    assert (simclr.grayscale_prob, simclr.blur_prob, simclr.blur_sigma) == (0.2, 0.5, [0.1, 2.0])
    assert simclr.blur_kernel_frac == 0.1
    moco_v1 = recipe("moco_v1").crops[0]
    assert (moco_v1.scale, moco_v1.color_jitter_prob, moco_v1.grayscale_prob) == ([0.2, 1.0], 1.0, 0.2)
    assert moco_v1.blur_prob == 0.0
    assert (moco_v1.brightness, moco_v1.contrast, moco_v1.saturation, moco_v1.hue) == (0.4, 0.4, 0.4, 0.4)
    moco_v2 = recipe("moco_v2").crops[0]
    assert (moco_v2.scale, moco_v2.color_jitter_prob, moco_v2.grayscale_prob) == ([0.2, 1.0], 0.8, 0.2)
    assert moco_v2.blur_prob == 0.5
    assert (moco_v2.brightness, moco_v2.contrast, moco_v2.saturation, moco_v2.hue) == (0.4, 0.4, 0.4, 0.1)
    for group in recipe("byol").crops + recipe("multicrop").crops:
        assert (group.brightness, group.contrast, group.saturation, group.hue) == (0.4, 0.4, 0.2, 0.1)
        assert (group.color_jitter_prob, group.grayscale_prob, group.hflip_prob) == (0.8, 0.2, 0.5)
    grey = recipe("grey").crops[0]
    assert (grey.scale, grey.saturation, grey.hue, grey.grayscale_prob, grey.blur_prob) == ([0.2, 1.0], 0, 0, 0, 0)


def test_byol_views_differ_only_in_blur_and_solarize():
    first, second = recipe("byol").crops
    assert (first.num, first.blur_prob, first.solarize_prob) == (1, 1.0, 0.0)
    assert (second.num, second.blur_prob, second.solarize_prob) == (1, 0.1, 0.2)
    assert replace(second, blur_prob=1.0, solarize_prob=0.0) == first


def test_multicrop_groups_have_their_own_sizes():
    cfg = recipe("multicrop")
    for image_size, local in ((224, 96), (32, 14)):
        transform = build_view_transform(cfg, image_size, *stats(3), 3)
        assert transform.sizes == [image_size, image_size] + [local] * 6
    views = transform(random_image(32, "RGB"))
    assert [v.shape[-1] for v in views] == [32, 32] + [14] * 6


@pytest.mark.parametrize("size, image_size, pixels", [(1.0, 32, 32), (0.5, 32, 16), (0.5, 224, 112),
                                                      (96 / 224, 224, 96), (24, 32, 24), (24, 224, 24), (2, 64, 2)])
def test_fractional_sizes_scale_with_the_image_and_whole_numbers_are_pixels(size, image_size, pixels):
    cfg = {"name": "t", "crops": [dict(IDENTITY, size=size)]}
    transform = build_view_transform(cfg, image_size, *stats(1), 1)
    assert transform.sizes == [pixels]
    assert transform(random_image(image_size, "L"))[0].shape == (1, pixels, pixels)


def test_a_size_that_resolves_below_two_pixels_names_its_key():
    with pytest.raises(ConfigError) as err:
        build_view_transform({"crops": [{"num": 1}, {"num": 1, "size": 0.05}]}, 16, *stats(1), 1)
    assert err.value.key == "augmentation.crops[1].size"


def test_identity_view_is_the_image_scaled_to_unit_range_and_normalised_per_channel():
    img = random_image(20, "RGB")
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]
    view = build_view_transform({"crops": [IDENTITY]}, 20, mean, std, 3)(img)[0]
    pixels = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    expected = (pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(view, expected)


def test_grey_input_is_replicated_for_three_channels_and_colour_input_reduced_for_one():
    grey = random_image(16, "L")
    view = build_view_transform({"crops": [IDENTITY]}, 16, [0.0] * 3, [1.0] * 3, 3)(grey)[0]
    expected = torch.from_numpy(np.array(grey)).float() / 255
    for c in range(3):
        torch.testing.assert_close(view[c], expected)
    colour = random_image(16, "RGB")
    view = build_view_transform({"crops": [IDENTITY]}, 16, [0.0], [1.0], 1)(colour)[0]
    expected = torch.from_numpy(np.array(colour.convert("L"))).float() / 255
    torch.testing.assert_close(view[0], expected)


def test_colour_operations_at_full_strength_keep_grey_views_one_channel():
    group = dict(num=2, color_jitter_prob=1.0, saturation=0.8, hue=0.5, grayscale_prob=1.0, blur_prob=1.0,
                 solarize_prob=1.0, equalize_prob=1.0)
    transform = build_view_transform({"crops": [group]}, 32, *stats(1), 1)
    for view in transform(random_image(28, "L")):
        assert view.shape == (1, 32, 32)


def test_solarize_inverts_the_pixels_at_or_above_the_threshold_on_the_unit_scale():
    img = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16), "L")
    cfg = {"crops": [dict(IDENTITY, solarize_prob=1.0, solarize_threshold=0.5)]}
    view = build_view_transform(cfg, 16, [0.0], [1.0], 1)(img)[0].flatten()
    x = torch.arange(256, dtype=torch.float32) / 255
    expected = torch.where(torch.arange(256) >= 128, (255 - torch.arange(256)) / 255, x)
    torch.testing.assert_close(view, expected)


@pytest.mark.parametrize("crop_size, frac, kernel", [(224, 0.1, 23), (96, 0.1, 9), (64, 0.1, 7), (32, 0.1, 3),
                                                     (16, 0.1, 3), (32, 1.0, 33)])
def test_blur_kernel_is_a_fraction_of_the_crop_odd_and_at_least_three(crop_size, frac, kernel):
    assert blur_kernel_size(crop_size, frac) == kernel


@pytest.mark.parametrize("name", ["byol", "multicrop"])
def test_the_same_torch_seed_gives_the_same_views_and_another_seed_other_views(name):
    transform = build_view_transform(recipe(name), 32, *stats(3), 3)
    img = random_image(32, "RGB")

    def views(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return transform(img)

    first, again, other = views(7), views(7), views(8)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not any(torch.equal(a, b) for a, b in zip(first, other))


def test_views_depend_on_torch_generator_only():
    transform = build_view_transform(recipe("multicrop"), 32, *stats(3), 3)
    img = random_image(32, "RGB")
    outputs = []
    for other_seed in (1, 2):
        random.seed(other_seed)
        np.random.seed(other_seed)
        torch.manual_seed(0)
        outputs.append(transform(img))
    assert all(torch.equal(a, b) for a, b in zip(*outputs))


def test_views_of_one_group_are_independent_draws():
    torch.manual_seed(0)
    first, second = build_view_transform(recipe("simclr"), 32, *stats(3), 3)(random_image(32, "RGB"))
    assert not torch.equal(first, second)


def test_dataclass_dictconfig_and_dict_give_the_same_views():
    raw = OmegaConf.load(CONF / "byol.yaml")
    img = random_image(32, "RGB")
    outputs = []
    for cfg in (recipe("byol"), raw, OmegaConf.to_container(raw)):
        torch.manual_seed(3)
        outputs.append(build_view_transform(cfg, 32, *stats(3), 3)(img))
    for views in outputs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outputs[0], views))


@pytest.mark.parametrize("crops, key, allowed", [
    ([{"num": 1}, {"num": 1, "blur_prob": 1.5}], "augmentation.crops[1].blur_prob", "a probability in [0, 1]"),
    ([{"scale": [0.9, 0.2]}], "augmentation.crops[0].scale", "[lo, hi] with 0 < lo <= hi <= 1"),
    ([{"scale": [0.0, 1.0]}], "augmentation.crops[0].scale", "[lo, hi] with 0 < lo <= hi <= 1"),
    ([{"scale": [0.5, 1.5]}], "augmentation.crops[0].scale", "[lo, hi] with 0 < lo <= hi <= 1"),
    ([{"num": 0}], "augmentation.crops[0].num", "an integer >= 1"),
    ([{"ratio": [1.5, 0.5]}], "augmentation.crops[0].ratio", "[lo, hi]"),
    ([{"blur_sigma": [0.0, 2.0]}], "augmentation.crops[0].blur_sigma", "[lo, hi]"),
    ([{"hue": 0.6}], "augmentation.crops[0].hue", "a number in [0, 0.5]"),
    ([{"brightness": -0.1}], "augmentation.crops[0].brightness", "a number >= 0"),
    ([{"size": 1.5}], "augmentation.crops[0].size", "a fraction"),
    ([{"size": 0.0}], "augmentation.crops[0].size", "a fraction"),
    ([{"size": 96.5}], "augmentation.crops[0].size", "a fraction"),
    ([{"solarize_threshold": 2.0}], "augmentation.crops[0].solarize_threshold", "a pixel value in [0, 1]"),
    ([{"blur_kernel_frac": 0.0}], "augmentation.crops[0].blur_kernel_frac", "(0, 1]"),
    ([{"interpolation": "nearest"}], "augmentation.crops[0].interpolation", "one of: bilinear, bicubic"),
    ([], "augmentation.crops", "at least one crop group"),
])
def test_impossible_values_raise_a_config_error_naming_the_dotted_key(crops, key, allowed):
    with pytest.raises(ConfigError) as err:
        build_view_transform({"name": "bad", "crops": crops}, 32, *stats(3), 3)
    assert err.value.key == key
    assert str(err.value).startswith(f"{key}=") and allowed in str(err.value)
    assert "\n" not in str(err.value)


def test_validate_on_the_schema_names_the_key_as_the_run_config_does():
    cfg = AugmentationConfig(crops=[CropGroupConfig(), CropGroupConfig(blur_prob=1.5)])
    with pytest.raises(ConfigError, match=r"^augmentation\.crops\[1\]\.blur_prob=1\.5 is not allowed: "
                                          r"expected a probability in \[0, 1\]$"):
        cfg.validate()


@pytest.mark.parametrize("crops, key", [([{"num": 1}, {"nmu": 2}], "augmentation.crops[1].nmu"),
                                        ([{"num": "two"}], "augmentation.crops[0].num"),
                                        ([{"scale": [0.1, "a"]}], "augmentation.crops[0].scale"),
                                        ([3], "augmentation.crops[0]")])
def test_unknown_keys_and_wrong_types_name_their_crop_group(crops, key):
    with pytest.raises(ConfigError) as err:
        to_augmentation_config({"crops": crops})
    assert err.value.key == key


@pytest.mark.parametrize("channels, mean, std, key", [(1, [0.5] * 3, [0.2] * 3, "data.mean"),
                                                      (3, [0.5] * 3, [0.2], "data.std"),
                                                      (3, [0.5] * 3, [0.2, 0.0, 0.2], "data.std"),
                                                      (2, [0.5] * 2, [0.2] * 2, "data.channels")])
def test_data_statistics_must_match_the_channel_count(channels, mean, std, key):
    for build in (lambda: build_view_transform(recipe("simclr"), 32, mean, std, channels),
                  lambda: build_eval_transform(32, mean, std, channels)):
        with pytest.raises(ConfigError) as err:
            build()
        assert err.value.key == key


@pytest.mark.parametrize("height, width, mode, image_size", [(28, 28, "L", 32), (96, 96, "RGB", 96),
                                                             (90, 120, "RGB", 64), (50, 40, "L", 32)])
def test_eval_transform_is_deterministic_square_and_leaves_the_generator_alone(height, width, mode, image_size):
    channels = 1 if mode == "L" else 3
    transform = build_eval_transform(image_size, *stats(channels), channels)
    img = random_image(height, mode, width=width)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = transform(img)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(1)
    assert torch.equal(transform(img), first)
    assert type(first) is torch.Tensor and first.dtype == torch.float32
    assert first.shape == (channels, image_size, image_size)


def test_eval_transform_keeps_the_centre_of_a_wide_image():
    img = random_image(20, "RGB", width=40)
    view = build_eval_transform(20, [0.0] * 3, [1.0] * 3, 3)(img)
    centre = torch.from_numpy(np.array(img)[:, 10:30]).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(view, centre)
