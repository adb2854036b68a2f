"""benchmarks.flop_count: FLOPs from shapes, checked against counts written out by hand for each case
(2 FLOPs per product of a weight element with an input element)."""

import torch
import torch.nn.functional as F

from benchmarks.flop_count import FlopCounter


def test_plain_conv_forward():
    x, w = torch.randn([2, 5, 7, 6]), torch.randn([4, 5, 3, 3])
    with FlopCounter() as count:
        F.conv2d(x, w, padding=1)
    assert dict(count.flops) == {'conv forward': 2 * 2 * 4 * 5 * 3 * 3 * 7 * 6}


def test_grouped_conv_forward_and_both_gradients():
    """groups = 3 (the per-sample convolution's layout): each of forward, grad input, grad weight is
    2 * N * O * (I / groups) * k * k * H * W; torch's own formula would give the weight gradient 3 times that."""
    x = torch.randn([1, 6, 8, 8], requires_grad=True)
    w = torch.randn([9, 2, 3, 3], requires_grad=True)
    with FlopCounter() as count:
        F.conv2d(x, w, padding=1, groups=3).square().sum().backward()
    one = 2 * 1 * 9 * 2 * 3 * 3 * 8 * 8
    assert count.flops['conv forward'] == one
    assert count.flops['conv grad input'] == one
    assert count.flops['conv grad weight'] == one


def test_gradient_only_for_what_requires_it():
    x, w = torch.randn([2, 3, 5, 5], requires_grad=True), torch.randn([4, 3, 3, 3])
    with FlopCounter() as count:
        F.conv2d(x, w).sum().backward()
    one = 2 * 2 * 4 * 3 * 3 * 3 * 3 * 3                        # 3 x 3 output positions (no padding)
    assert count.flops['conv grad input'] == one and count.flops['conv grad weight'] == 0


def test_transposed_conv_counts_input_positions():
    """Stride-2 transposed convolution: every input pixel meets every weight element once."""
    x, w = torch.randn([2, 4, 5, 5]), torch.randn([4, 3, 3, 3])
    with FlopCounter() as count:
        out = F.conv_transpose2d(x, w, stride=2)
    assert out.shape[2:] == (11, 11)
    assert count.flops['conv forward'] == 2 * 2 * 4 * 3 * 3 * 3 * 5 * 5


def test_second_order_pass_is_counted():
    """Path-length shape: g = d<conv(x, w), v>/dx with create_graph, then d|g|^2/dw. Forward and grad input
    touch the forward's products once each; autograd's double backward then runs two convolutions: the weight
    gradient of the grad-input convolution and conv(dL/dg, w), the gradient w.r.t. v, which it forms although
    v needs none. Each is the forward's product set again."""
    x, w = torch.randn([2, 3, 6, 6], requires_grad=True), torch.randn([4, 3, 3, 3], requires_grad=True)
    v = torch.randn([2, 4, 6, 6])
    with FlopCounter() as count:
        g, = torch.autograd.grad((F.conv2d(x, w, padding=1) * v).sum(), [x], create_graph=True)
        gw, = torch.autograd.grad(g.square().sum(), [w])
    one = 2 * 2 * 4 * 3 * 3 * 3 * 6 * 6
    assert dict(count.flops) == {'conv forward': 3 * one, 'conv grad input': one, 'conv grad weight': 0}


def test_dense_layer_with_bias():
    x, w, b = torch.randn([7, 5]), torch.randn([3, 5]), torch.randn([3])
    with FlopCounter() as count:
        F.linear(x, w, b)
        torch.bmm(torch.randn([2, 4, 5]), torch.randn([2, 5, 6]))
    assert dict(count.flops) == {'matmul': 2 * 7 * 5 * 3 + 2 * 2 * 4 * 5 * 6}


def test_training_step_counts_per_phase():
    """bench_training_step's worker at 16 px: the two models' D is one network, so Dreg's counts are equal;
    Gmain's convolutions are equal (the per-sample weight gradient also yields the style gradient) and only
    its matrix products grow (mapping and affine on every row); Greg's first backward adds the per-sample
    weight gradient, the one convolution the baseline's elementwise style gradient does without."""
    from benchmarks.bench_training_step import run_worker
    kw = dict(res=16, cmax=32, cbase=512, batch=2, rows=32, dim=32, iters=1, warmup=0, device_name='cpu', seed=0,
              clock='cpu', count_flops=True)
    base, over = (run_worker(model, **kw)['flops'] for model in ('baseline', 'overparam'))
    assert base['Dreg'] == over['Dreg']
    for key in ('conv forward', 'conv grad input', 'conv grad weight'):
        assert base['Gmain'][key] == over['Gmain'][key]
    assert over['Gmain']['matmul'] > 10 * base['Gmain']['matmul']
    assert over['Greg']['conv grad weight'] == 2 * base['Greg']['conv grad weight'] > 0
    total = base['total']
    assert total['iteration'] == total['Gmain'] + total['Greg'] / 4 + total['Dmain'] + total['Dreg'] / 16
