"""First-use self-check of the CUDA ops (torch_utils/ops/self_check.py), on the CPU.

CPU tensors pose as CUDA ones (`custom_ops._is_cuda_tensor` patched) and the plugins are
replaced by the torch mirror of the kernels (tests/test_ops.py), correct or with an injected
fault; the fused modulated convolution gets a fake kernel entry built on the reference path.
"""

import warnings

import pytest
import torch

from test_ops import _MirrorPlugin
from torch_utils import custom_ops
from torch_utils.ops import bias_act, modulated_conv2d_cuda as mcc, self_check, upfirdn2d
from torch_utils.ops.modulated_conv2d import modulated_conv2d_ref


@pytest.fixture
def checking(monkeypatch, tmp_path):
    """Self-check on, no verdicts yet, verdicts logged to tmp_path/log.txt; CPU tensors count as CUDA."""
    monkeypatch.setattr(self_check, '_enabled', True)
    monkeypatch.setattr(self_check, '_verdicts', {})
    monkeypatch.setattr(self_check, '_log_path', None)
    monkeypatch.setattr(custom_ops, '_is_cuda_tensor', lambda t: isinstance(t, torch.Tensor))
    for plugin in (bias_act._plugin, upfirdn2d._plugin):
        monkeypatch.setattr(plugin, 'error', None)
    log = tmp_path / 'log.txt'
    self_check.log_to(log)
    return log


class _CountingMirror(_MirrorPlugin):
    calls = 0
    forward_scale = 1.0
    grad_scale = 1.0

    @classmethod
    def bias_act(cls, x, b, xref, yref, dy, grad, *rest):
        cls.calls += 1
        out = _MirrorPlugin.bias_act(x, b, xref, yref, dy, grad, *rest)
        return out * (cls.forward_scale if grad == 0 else cls.grad_scale)

    @classmethod
    def upfirdn2d(cls, *args):
        cls.calls += 1
        return _MirrorPlugin.upfirdn2d(*args) * cls.forward_scale


def _plugin(monkeypatch, forward_scale=1.0, grad_scale=1.0):
    fake = type('Fake', (_CountingMirror,), dict(calls=0, forward_scale=forward_scale, grad_scale=grad_scale))
    for op in (bias_act, upfirdn2d):
        monkeypatch.setattr(op._plugin, 'module', fake)
    return fake


def _x(seed=0, shape=(2, 4, 6, 6)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))

#----------------------------------------------------------------------------

def test_correct_kernels_pass_and_are_used(checking, monkeypatch):
    fake = _plugin(monkeypatch)
    x, b = _x(), torch.randn(4)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        y = bias_act.bias_act(x, b, act='lrelu', clamp=256)
        z = upfirdn2d.upsample2d(x, f)
    assert fake.calls > 0
    torch.testing.assert_close(y, bias_act.bias_act(x, b, act='lrelu', clamp=256, impl='ref'))
    torch.testing.assert_close(z, upfirdn2d.upsample2d(x, f, impl='ref'))
    verdicts = self_check.results()
    assert sorted(v.op for v in verdicts) == ['bias_act', 'upfirdn2d'] and all(v.ok for v in verdicts)
    assert all(v.error < 1e-6 for v in verdicts)
    log = checking.read_text()
    assert log.count('CUDA kernel matches the reference') == 2 and 'act=lrelu' in log and 'up=(2, 2)' in log
    # A second call reuses the verdict: the kernel runs once more, nothing is checked again.
    before = fake.calls
    bias_act.bias_act(x, b, act='lrelu', clamp=256)
    assert fake.calls == before + 1 and len(self_check.results()) == 2


@pytest.mark.parametrize('forward_scale,grad_scale,where', [(1.01, 1.0, 'forward'), (1.0, 0.99, 'gradient')])
def test_faulty_bias_act_kernel_falls_back_loudly(checking, monkeypatch, forward_scale, grad_scale, where):
    fake = _plugin(monkeypatch, forward_scale=forward_scale, grad_scale=grad_scale)
    x, b = _x(1), torch.randn(4)
    with pytest.warns(self_check.KernelSelfCheckWarning) as record:
        y = bias_act.bias_act(x, b, act='tanh')
        y2 = bias_act.bias_act(x, b, act='tanh')
    assert len(record) == 1
    msg = str(record[0].message)
    assert 'OPS SELF-CHECK FAILED' in msg and 'bias_act' in msg and 'act=tanh' in msg and 'float32' in msg
    assert where in msg and 'reference implementation' in msg
    error = float(msg.split('max rel. error ')[1].split()[0])
    assert error > 1e-3
    # The reference path, exactly, from now on; the kernel is not called again.
    calls = fake.calls
    ref = bias_act.bias_act(x, b, act='tanh', impl='ref')
    assert torch.equal(y, ref) and torch.equal(y2, ref)
    bias_act.bias_act(x, b, act='tanh')
    assert fake.calls == calls
    assert 'OPS SELF-CHECK FAILED: bias_act' in checking.read_text()
    # Another configuration class is checked on its own (and here fails on its own).
    with pytest.warns(self_check.KernelSelfCheckWarning, match='act=lrelu'):
        bias_act.bias_act(x, b, act='lrelu')
    # impl='cuda' asks for the kernel itself: no check, no fallback.
    assert not torch.equal(bias_act.bias_act(x, b, act='tanh', impl='cuda'), ref)


def test_faulty_upfirdn2d_kernel_falls_back(checking, monkeypatch):
    _plugin(monkeypatch, forward_scale=1.01)
    x = _x(2)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    with pytest.warns(self_check.KernelSelfCheckWarning, match=r'upfirdn2d \[float32, up=\(1, 1\), down=\(2, 2\)'):
        y = upfirdn2d.downsample2d(x, f)
    assert torch.equal(y, upfirdn2d.downsample2d(x, f, impl='ref'))
    verdict, = self_check.results()
    assert not verdict.ok and 'filter=4x4' in verdict.config


def test_raising_kernel_counts_as_failure(checking, monkeypatch):
    class Broken:
        @staticmethod
        def bias_act(*args):
            raise RuntimeError('CUDA error: an illegal memory access was encountered')
    monkeypatch.setattr(bias_act._plugin, 'module', Broken)
    x = _x(3)
    with pytest.warns(self_check.KernelSelfCheckWarning, match='illegal memory access'):
        y = bias_act.bias_act(x, act='relu')
    assert torch.equal(y, bias_act.bias_act(x, act='relu', impl='ref'))


def test_disabled_trusts_the_kernel(checking, monkeypatch):
    fake = _plugin(monkeypatch, forward_scale=1.01)
    monkeypatch.setattr(self_check, '_enabled', None)
    monkeypatch.setenv(self_check.ENV_VAR, '0')
    x = _x(4)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        y = bias_act.bias_act(x, act='relu')
    assert fake.calls == 1 and self_check.results() == []
    torch.testing.assert_close(y, bias_act.bias_act(x, act='relu', impl='ref') * 1.01)
    monkeypatch.setenv(self_check.ENV_VAR, '1')
    assert self_check.is_enabled()


def test_log_to_replays_earlier_verdicts(checking, monkeypatch, tmp_path):
    _plugin(monkeypatch, forward_scale=1.01)
    with pytest.warns(self_check.KernelSelfCheckWarning):
        bias_act.bias_act(_x(5), act='sigmoid')
    later = tmp_path / 'second-run' / 'log.txt'
    later.parent.mkdir()
    self_check.log_to(later)
    assert 'OPS SELF-CHECK FAILED: bias_act [float32, act=sigmoid' in later.read_text()

#----------------------------------------------------------------------------
# Fused modulated convolution: a fake kernel entry on CPU tensors.

@pytest.fixture
def fake_modconv(checking, monkeypatch):
    """`modulated_conv2d_cuda.modulated_conv2d` on CPU tensors with a reference-based fake kernel."""
    _plugin(monkeypatch)   # upfirdn2d after the upsampling conv: the (correct) mirror, no build
    state = dict(scale=1.0, calls=0)
    def fake_fused(x, weight, styles, backend=None, **kw):
        assert backend == 'fake-backend'
        state['calls'] += 1
        return modulated_conv2d_ref(x=x, weight=weight, styles=styles, fused_modconv=True, **kw) * state['scale']
    monkeypatch.setattr(mcc, '_backend_for', lambda x: 'fake-backend')
    monkeypatch.setattr(mcc, 'fused_modulated_conv2d', fake_fused)
    return state


def _layer(up=1, rows=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn([3, 5, 4, 4], generator=gen)
    w = torch.randn([6, 5, 3, 3], generator=gen)
    s = torch.randn([3, rows, 5], generator=gen) + 1
    return dict(x=x, weight=w, styles=s, padding=1, up=up,
                resample_filter=upfirdn2d.setup_filter([1, 3, 3, 1]) if up > 1 else None)


def test_modconv_correct_kernel_passes(fake_modconv):
    layer = _layer()
    y = mcc.modulated_conv2d(**layer)
    assert fake_modconv['calls'] >= 2          # the check's run, then the call itself
    verdict, = self_check.results()
    assert verdict.ok and verdict.op == 'modulated_conv2d' and 'kernel=3x3' in verdict.config
    torch.testing.assert_close(y, modulated_conv2d_ref(**layer))


def test_modconv_faulty_kernel_falls_back(fake_modconv):
    fake_modconv['scale'] = 1.01
    layer = _layer(rows=6)
    noise = torch.randn([3, 1, 4, 4])
    with pytest.warns(self_check.KernelSelfCheckWarning) as record:
        y = mcc.modulated_conv2d(noise=noise, **layer)
        mcc.modulated_conv2d(noise=noise, **layer)
    assert len(record) == 1
    msg = str(record[0].message)
    assert 'modulated_conv2d [float32' in msg and 'noise=True' in msg and 'style_rows=O' in msg
    calls = fake_modconv['calls']
    assert torch.equal(y, modulated_conv2d_ref(noise=noise, **layer))
    mcc.modulated_conv2d(noise=noise, **layer)
    assert fake_modconv['calls'] == calls      # that configuration no longer reaches the kernel
    # Upsampling layers are their own configuration class.
    with pytest.warns(self_check.KernelSelfCheckWarning, match='up=2'):
        mcc.modulated_conv2d(**_layer(up=2))
    assert [v.ok for v in self_check.results() if v.op == 'modulated_conv2d'] == [False, False]


def test_modconv_large_output_is_not_checked(fake_modconv, monkeypatch):
    monkeypatch.setattr(mcc, 'max_fused_pixels', 8)   # 4 x 4 outputs take the reference path anyway
    fake_modconv['scale'] = 1.01
    mcc.modulated_conv2d(**_layer())
    assert self_check.results() == []


def test_verdicts_reach_the_training_and_inversion_logs(checking, monkeypatch, tmp_path):
    """training.run_log.RunLog and inversion.run_files.RunLog point the self-check at their log.txt."""
    from inversion import run_files
    from training import run_log
    _plugin(monkeypatch, forward_scale=1.01)
    with pytest.warns(self_check.KernelSelfCheckWarning):
        bias_act.bias_act(_x(6), act='elu')
    train_log = run_log.RunLog(str(tmp_path / 'train'), tensorboard=False, echo=False)
    try:
        assert 'OPS SELF-CHECK FAILED: bias_act [float32, act=elu' in (tmp_path / 'train' / 'log.txt').read_text()
    finally:
        train_log.close()
    (tmp_path / 'invert').mkdir()
    run_files.RunLog(tmp_path / 'invert' / 'log.txt', echo=False)
    with pytest.warns(self_check.KernelSelfCheckWarning):
        upfirdn2d.upsample2d(_x(7), upfirdn2d.setup_filter([1, 3, 3, 1]))
    text = (tmp_path / 'invert' / 'log.txt').read_text()
    assert 'act=elu' in text and 'OPS SELF-CHECK FAILED: upfirdn2d' in text
