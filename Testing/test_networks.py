"""Shapes and the defining properties of MSFM and NSA (paper 001, eqs. 11-16)."""

from __future__ import annotations

import torch

from VerdiffSegmentLib.networks import DiffusionUNet, MultiScaleFusionModule, NoiseSemanticAdapter, VerdiffNet
from VerdiffSegmentLib.networks.layers import DilatedDepthwiseConv2d


def test_msfm_branch_weights_are_a_softmax_across_kernel_sizes():
    """Eqs. 11-14 recomputed step by step: a_n + b_n + c_n = 1 and X = sum of weighted branches."""
    torch.manual_seed(0)
    module = MultiScaleFusionModule(1, 8).eval()
    image = torch.randn(2, 1, 32, 48)
    features = torch.stack([branch(image) for branch in module.branches], dim=1)
    z = module.squeeze(features.sum(dim=1).mean(dim=(2, 3)))
    assert z.shape == (2, 8)  # d = max(C // 4, 8)
    weights = torch.stack([proj(z) for proj in module.branch_logits], dim=1).softmax(dim=1)
    assert torch.allclose(weights.sum(dim=1), torch.ones(2, 8))
    out = module(image)
    assert out.shape == (2, 8, 32, 48)
    assert torch.allclose(out, (weights[..., None, None] * features).sum(dim=1), atol=1e-5)


def test_nsa_gates_its_input():
    """V = V~ * X: a zero input gives a zero output, whatever the weights."""
    module = NoiseSemanticAdapter(16)
    assert torch.count_nonzero(module(torch.zeros(1, 16, 20, 20))) == 0
    x = torch.randn(1, 16, 20, 20)
    assert module(x).shape == x.shape
    assert module.spatial.dilation == (3, 3) and module.spatial.kernel_size == (7, 7)
    assert module.spatial.groups == 16  # depthwise


def test_phase_split_dilated_convolution_equals_the_dilated_one():
    """The NSA's fast dilated depthwise convolution is exact, forward and backward, on sizes
    that are and are not multiples of the dilation."""
    torch.manual_seed(0)
    conv = DilatedDepthwiseConv2d(6, 7, dilation=3)
    for height, width in ((23, 40), (24, 24), (5, 7)):
        x = torch.randn(2, 6, height, width, requires_grad=True)
        reference = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=9, dilation=3, groups=6)
        out = conv(x)
        assert torch.allclose(out, reference, atol=1e-5)
        grads = torch.autograd.grad(out.square().sum(), [x, conv.weight])
        reference_grads = torch.autograd.grad(reference.square().sum(), [x, conv.weight])
        for grad, reference_grad in zip(grads, reference_grads):
            assert torch.allclose(grad, reference_grad, atol=1e-3, rtol=1e-4)


def test_verdiff_net_shapes_and_noncubic_inputs():
    net = VerdiffNet(channels=(8, 16, 32, 64)).eval()
    image = torch.randn(3, 1, 48, 80)  # padded sizes are multiples of 8, not squares
    with torch.inference_mode():
        condition = net.condition(image)
        assert condition.prior.shape == (3, 1, 48, 80)
        assert condition.prior.min() >= -1 and condition.prior.max() <= 1
        eps = net(torch.randn(3, 1, 48, 80), torch.tensor([0, 500, 999]), condition)
    assert eps.shape == (3, 1, 48, 80)
    assert net.input_multiple == 8


def test_ensemble_members_are_independent_of_batch_composition():
    """GroupNorm, not BatchNorm, inside the U-Nets: a slice's output does not depend on its batch."""
    torch.manual_seed(0)
    net = DiffusionUNet(channels=(8, 16, 32)).eval()
    x, prior, features = torch.randn(4, 1, 32, 32), torch.randn(4, 1, 32, 32), torch.randn(4, 16, 32, 32)
    t = torch.tensor([10, 20, 30, 40])
    with torch.inference_mode():
        batched = net(x, t, prior, features)
        single = net(x[:1], t[:1], prior[:1], features[:1])
    assert torch.allclose(batched[:1], single, atol=1e-5)


def test_the_dilated_depthwise_convolution_equals_torchs_also_on_maps_smaller_than_its_dilation():
    """An image a few pixels wide reaches the deepest level as a 1- or 2-pixel map: fewer
    rows than the dilation. The split into sub-images must still equal the dilated convolution."""
    from VerdiffSegmentLib.networks.layers import DilatedDepthwiseConv2d

    torch.manual_seed(0)
    layer = DilatedDepthwiseConv2d(4, 7, dilation=3)
    for shape in ((2, 4, 2, 13), (1, 4, 1, 1), (2, 4, 9, 10)):
        x = torch.randn(shape)
        expected = torch.nn.functional.conv2d(x, layer.weight, layer.bias, padding=layer.padding, dilation=layer.dilation, groups=4)
        assert torch.allclose(layer(x), expected, atol=1e-6)
