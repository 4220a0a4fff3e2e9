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


@pytest.mark.parametrize("size", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_stride_2_conv_of_a_small_map_gives_the_float32_convolutions_weight_gradient(dtype, size):
    # ResNet layer3's first conv (128 -> 256, 3x3, stride 2) on 1 x 1 maps, batch 256: with bf16 autocast
    # on the CPU, torch's own convolution returned a weight gradient of ~1e36 here.
    from ssl_zoo.backbones.small_maps import SmallMapConv2d, use_matmul_on_small_maps

    torch.manual_seed(0)
    reference = torch.nn.Conv2d(128, 256, 3, stride=2, padding=1, bias=False)
    conv = use_matmul_on_small_maps(torch.nn.Sequential(torch.nn.Conv2d(128, 256, 3, 2, 1, bias=False)))[0]
    assert type(conv) is SmallMapConv2d
    conv.load_state_dict(reference.state_dict())
    x, g = torch.randn(256, 128, size, size), torch.randn(256, 256, 1, 1)
    expected = torch.autograd.grad((reference(x) * g).sum(), reference.weight)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        y = conv(x)
    got = torch.autograd.grad((y.float() * g).sum(), conv.weight)[0]
    assert y.shape == (256, 256, 1, 1)
    torch.testing.assert_close(got, expected, rtol=0.02, atol=0.02 * expected.abs().max().item())


@pytest.mark.parametrize("shape", [  # (C_in, C_out, kernel, stride, padding, H, W)
    (6, 10, 3, 1, 1, 2, 2), (6, 10, 3, 2, 1, 2, 2), (6, 10, 3, 2, 1, 1, 1), (6, 10, 7, 2, 3, 2, 2),
    (6, 10, 5, 1, 2, 1, 3), (6, 10, 2, 1, 0, 2, 2), (6, 10, 3, 1, 3, 1, 2), (6, 10, 3, 1, 1, 3, 3),
    (6, 10, 3, 2, 1, 5, 4)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_small_map_convolutions_match_torchs_output_and_gradients_in_float64(shape, channels_last):
    from ssl_zoo.backbones.small_maps import use_matmul_on_small_maps

    c_in, c_out, k, s, p, h, w = shape
    torch.manual_seed(0)
    reference = torch.nn.Conv2d(c_in, c_out, k, s, p).double()
    conv = use_matmul_on_small_maps(torch.nn.Sequential(torch.nn.Conv2d(c_in, c_out, k, s, p).double()))[0]
    conv.load_state_dict(reference.state_dict())
    x = torch.randn(3, c_in, h, w, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = reference(x1), conv(x2)
    assert y2.shape == y1.shape
    torch.testing.assert_close(y2, y1)
    g = torch.randn_like(y1)
    grads1 = torch.autograd.grad((y1 * g).sum(), [x1, reference.weight, reference.bias])
    grads2 = torch.autograd.grad((y2 * g).sum(), [x2, conv.weight, conv.bias])
    for a, b in zip(grads2, grads1):
        torch.testing.assert_close(a, b)


def test_resnet_convolutions_take_the_small_map_form_and_keep_their_state_dict_keys():
    from ssl_zoo.backbones.small_maps import SmallMapConv2d

    model, _ = build_backbone(cfg(cifar_stem=False), image_size=32)
    plain, _ = build_backbone(cfg(cifar_stem=False), image_size=32)
    assert type(model.layer4[0].conv1) is SmallMapConv2d and type(model.conv1) is SmallMapConv2d  # 7x7, p=3
    assert type(model.layer3[1].conv2) is SmallMapConv2d
    assert type(model.layer4[0].downsample[0]) is torch.nn.Conv2d  # 1x1: nothing to do
    assert model.state_dict().keys() == plain.state_dict().keys()
