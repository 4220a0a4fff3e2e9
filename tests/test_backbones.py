import pytest
import torch
from omegaconf import OmegaConf

from ssl_zoo.backbones import build_backbone
from ssl_zoo.errors import ConfigError
from ssl_zoo.heads import MLP


def cfg(**kw):
    return OmegaConf.create({"name": "resnet18", **kw})


@pytest.mark.parametrize("name,dim", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
def test_resnets_give_their_feature_dim(name, dim):
    model, feature_dim = build_backbone(cfg(name=name), image_size=32, in_chans=3)
    assert feature_dim == dim
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, dim)


def test_cifar_stem_is_automatic_for_small_images_and_overridable():
    small, _ = build_backbone(cfg(), image_size=32, in_chans=1)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, torch.nn.Identity)
    large, _ = build_backbone(cfg(), image_size=96)
    assert large.conv1.kernel_size == (7, 7)
    forced, _ = build_backbone(cfg(cifar_stem=False), image_size=32, in_chans=1)
    assert forced.conv1.kernel_size == (7, 7) and forced.conv1.in_channels == 1


def test_vit_tiny_takes_image_and_patch_size():
    model, dim = build_backbone(OmegaConf.create({"name": "vit_tiny", "patch_size": 4}), image_size=16, in_chans=1)
    assert dim == 192
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 192)


def test_vit_patch_size_must_divide_image_size():
    with pytest.raises(ConfigError, match="backbone.patch_size"):
        build_backbone(OmegaConf.create({"name": "vit_tiny", "patch_size": 5}), image_size=16)


def test_any_timm_model_by_name():
    model, dim = build_backbone(OmegaConf.create({"name": "timm", "model_name": "resnet10t"}), image_size=32)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, dim)


def test_unknown_timm_model_is_a_config_error():
    with pytest.raises(ConfigError, match="backbone.model_name"):
        build_backbone(OmegaConf.create({"name": "timm", "model_name": "no_such_net"}), image_size=32)


def test_mlp_shapes_and_bn_layout():
    head = MLP(8, 16, 4, num_layers=3, last_bn=True)
    assert head(torch.randn(5, 8)).shape == (5, 4)
    kinds = [type(m).__name__ for m in head.net]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    no_bn = MLP(8, 16, 4, hidden_bn=False)
    assert [type(m).__name__ for m in no_bn.net] == ["Linear", "ReLU", "Linear"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_stride_2_conv_of_a_one_pixel_map_gives_the_float32_convolutions_weight_gradient(dtype):
    # ResNet layer3's first conv (128 -> 256, 3x3, stride 2) on 1 x 1 maps, batch 256: with bf16 autocast
    # on the CPU, torch's own convolution returned a weight gradient of ~1e36 here.
    from ssl_zoo.backbones.centre_tap import CentreTapConv2d, use_centre_tap_on_one_pixel_maps

    torch.manual_seed(0)
    reference = torch.nn.Conv2d(128, 256, 3, stride=2, padding=1, bias=False)
    conv = use_centre_tap_on_one_pixel_maps(torch.nn.Sequential(torch.nn.Conv2d(128, 256, 3, 2, 1, bias=False)))[0]
    assert type(conv) is CentreTapConv2d
    conv.load_state_dict(reference.state_dict())
    x, g = torch.randn(256, 128, 1, 1), torch.randn(256, 256, 1, 1)
    expected = torch.autograd.grad((reference(x) * g).sum(), reference.weight)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        y = conv(x)
    got = torch.autograd.grad((y.float() * g).sum(), conv.weight)[0]
    assert y.shape == (256, 256, 1, 1)
    torch.testing.assert_close(got, expected, rtol=0.02, atol=0.02 * expected.abs().max().item())
    larger = torch.randn(4, 128, 5, 5)  # any larger map goes through the ordinary convolution
    torch.testing.assert_close(conv(larger), reference(larger))


def test_resnet_convolutions_with_same_padding_take_the_centre_tap_form_and_keep_their_state_dict_keys():
    from ssl_zoo.backbones.centre_tap import CentreTapConv2d

    model, _ = build_backbone(cfg(cifar_stem=False), image_size=32)
    plain, _ = build_backbone(cfg(cifar_stem=False), image_size=32)
    assert type(model.layer4[0].conv1) is CentreTapConv2d and type(model.conv1) is CentreTapConv2d  # 7x7, p=3
    assert type(model.layer4[0].downsample[0]) is torch.nn.Conv2d  # 1x1: nothing to do
    assert model.state_dict().keys() == plain.state_dict().keys()
