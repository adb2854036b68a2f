"""torch_utils.compiled: the --compile switch, the eager fallback with one warning, accounting, fused Adam, the
TorchScript -> FX twin, and the ops' reference path under torch.compile. Tiny functions (each compiles in seconds)."""

import uuid
import warnings

import pytest
import torch

from torch_utils import compiled

pytestmark = pytest.mark.usefixtures('one_thread')


def _fresh_fn():
    """An elementwise function whose generated C++ is new to this process and to Inductor's caches (so that a
    broken C++ compiler is really invoked): its constant is unique."""
    scale = 1.0 + (uuid.uuid4().int % 10**6) / 10**7

    def fn(x):
        return (x * scale + 1).relu().sum(dim=1)
    return fn


def test_modes_and_break_even():
    assert [compiled.check_mode(m) for m in ('auto', 'ON', 'off', True, False, None)] == \
        ['auto', 'on', 'off', 'on', 'off', 'off']
    with pytest.raises(ValueError, match='--compile fast: use one of auto, on, off'):
        compiled.check_mode('fast')
    # Break-even = compile_s / (step_s * (1 - ratio)) = 10 / (0.5 * 0.2) = 100 steps; margin 1.5 -> 150.
    assert not compiled.repays(150, 0.5, 0.8, 10.0)
    assert compiled.repays(151, 0.5, 0.8, 10.0)
    assert compiled.repays(101, 0.5, 0.8, 10.0, margin=1.0) and not compiled.repays(99, 0.5, 0.8, 10.0, margin=1.0)
    assert not compiled.repays(10**9, 1.0, 1.0, 1.0) and not compiled.repays(10**9, 1.0, None, 1.0)


def test_off_is_eager_and_on_compiles_one_graph_per_shape():
    def fn(x):
        return x.sin() * 2
    off = compiled.Compiler('off').function('f', lambda: fn)
    x = torch.randn(3, 4)
    assert torch.equal(off(x), x.sin() * 2) and off.graphs == 0 and off.calls == 0

    on = compiled.Compiler('on')
    f = on.function('f', lambda: fn)
    assert on.function('f', lambda: None) is f                  # one function per key
    for _ in range(3):
        torch.testing.assert_close(f(x), x.sin() * 2)
    assert f.graphs == 1 and f.calls == 3                       # one graph for three calls
    f(torch.randn(5, 4))
    assert f.graphs == 2 and on.graphs == 2                      # static shapes: a new shape is a new graph
    summary = on.summary()
    assert summary['active'] and summary['failure'] is None and summary['graphs'] == 2


def _broken_cxx():
    return dict(**{'cpp.cxx': ('/nonexistent/c++-for-test',)})


def test_no_cxx_compiler_falls_back_to_eager_with_one_warning():
    logged = []
    comp = compiled.Compiler('on', log=logged.append)
    fns = [comp.function(k, _fresh_fn, options=_broken_cxx()) for k in ('a', 'b')]
    x = torch.randn(4, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        outs = [fn(x) for fn in fns for _ in range(2)]
    fallbacks = [w for w in caught if issubclass(w.category, compiled.CompileFallbackWarning)]
    assert len(fallbacks) == 1, [str(w.message) for w in caught]
    message = str(fallbacks[0].message)
    assert '\n' not in message and 'running eagerly' in message and '--compile off' in message
    assert 'C++ compiler' in message                                     # the reason, in the one line
    assert logged == [message]
    assert not comp.active and comp.summary()['failure'] is not None
    for fn, out in zip([fns[0], fns[0], fns[1], fns[1]], outs):
        torch.testing.assert_close(out, fn.eager(x), rtol=0, atol=0)   # the eager results, bitwise


def test_untraceable_op_falls_back_and_a_real_error_propagates():
    def untraceable(x):
        torch._dynamo.graph_break()                                     # fullgraph=True refuses any break
        return x + 1
    comp = compiled.Compiler('on')
    f = comp.function('g', lambda: untraceable)
    with pytest.warns(compiled.CompileFallbackWarning, match='graph_break|graph break|Graph break'):
        assert torch.equal(f(torch.zeros(2)), torch.ones(2))
    assert not comp.active

    def wrong(x):
        return x @ x                                                   # [2, 3] @ [2, 3]: the caller's bug
    comp = compiled.Compiler('on')
    g = comp.function('w', lambda: wrong)
    with warnings.catch_warnings():
        warnings.simplefilter('error', compiled.CompileFallbackWarning)
        with pytest.raises(RuntimeError, match='cannot be multiplied|size mismatch|shapes'):
            g(torch.zeros(2, 3))


def test_after_and_undo_are_part_of_the_protected_call():
    x = torch.randn(3, 5, requires_grad=True)

    def backward(out):
        out.sum().backward()
    comp = compiled.Compiler('on')
    f = comp.function('h', _fresh_fn, options=_broken_cxx())
    undone = []
    with pytest.warns(compiled.CompileFallbackWarning):
        f(x, after=backward, undo=lambda: undone.append(1))
    eager = x.detach().clone().requires_grad_(True)
    f.eager(eager).sum().backward()
    assert undone == [1] and torch.equal(x.grad, eager.grad)           # one backward: the eager one


def test_fuse_adam_switches_kernel_keeps_update():
    def run(fuse_after):
        p = torch.nn.Parameter(torch.linspace(-1, 1, 64).reshape(8, 8))
        opt = torch.optim.Adam([p], lr=0.05, betas=(0.9, 0.999))
        g = torch.Generator().manual_seed(0)
        for step in range(6):
            if step == fuse_after:
                assert compiled.fuse_adam_(opt)
                assert opt.param_groups[0]['fused'] and opt.state[p]['step'].device == p.device
            p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        return p.detach()
    plain, fused = run(None), run(3)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    assert not compiled.fuse_adam_(torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1))


class _ScriptedFeatures(torch.nn.Module):
    """The call signature of NVIDIA's vgg16.pt (images in [0, 255], two bool flags) with control flow on them."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor, resize_images: bool = True, return_lpips: bool = False) -> torch.Tensor:
        if resize_images:
            x = torch.nn.functional.interpolate(x, size=(8, 8), mode='area')
        f = torch.nn.functional.leaky_relu(self.conv(x / 127.5 - 1), 0.2)
        if return_lpips:
            f = f / f.square().sum(dim=1, keepdim=True).add(1e-10).sqrt()
        return f.flatten(1)


@pytest.mark.filterwarnings('ignore:.*torch.jit.*:FutureWarning')
def test_traceable_script_twin_matches_torchscript_and_compiles_whole():
    torch.manual_seed(0)
    script = torch.jit.script(_ScriptedFeatures().requires_grad_(False))
    x = torch.rand(2, 3, 16, 16) * 255
    twin = compiled.traceable_script(script, (x, False, True))
    torch.testing.assert_close(twin(x, False, True), script(x, resize_images=False, return_lpips=True))
    comp = compiled.Compiler('on')
    f = comp.function('twin', lambda: (lambda v: twin(v, False, True).square().sum(dim=1)))
    torch.testing.assert_close(f(x), script(x, False, True).square().sum(dim=1))
    assert comp.active and f.graphs == 1



@pytest.mark.filterwarnings('ignore:.*torch.jit.*:FutureWarning')
def test_traceable_script_refuses_a_failed_or_wrong_conversion(monkeypatch):
    from torch._export import converter
    script = torch.jit.script(_ScriptedFeatures().requires_grad_(False))
    x = torch.rand(1, 3, 8, 8) * 255

    class Converted:
        def __init__(self, module, args):
            pass

        def convert(self):
            class Program:
                @staticmethod
                def module():
                    return _ScriptedFeatures()                      # other (random) weights: other values
            return Program()
    monkeypatch.setattr(converter, 'TS2EPConverter', Converted)
    with pytest.raises(RuntimeError, match='other values than the TorchScript module'):
        compiled.traceable_script(script, (x, False, True))

    def fails(module, args):
        raise ValueError('unsupported node prim::Foo\nmore')
    monkeypatch.setattr(converter, 'TS2EPConverter', fails)
    with pytest.raises(RuntimeError, match=r'conversion failed \(ValueError: unsupported node prim::Foo\)'):
        compiled.traceable_script(script, (x, False, True))


def test_ops_take_the_reference_path_under_compile(monkeypatch):
    """A CUDA plugin (and its first-use self-check) is never called from a compiled graph: the reference path is
    traced instead. Emulated with a plugin that claims CUDA and fails if it is ever loaded."""
    from torch_utils import custom_ops
    from torch_utils.ops import bias_act, self_check

    def trap(*args, **kwargs):
        raise AssertionError('the CUDA plugin or its self-check ran inside a compiled graph')
    monkeypatch.setattr(custom_ops, '_is_cuda_tensor', lambda x: True)
    monkeypatch.setattr(bias_act._plugin, 'try_load', lambda: True)
    monkeypatch.setattr(bias_act._plugin, 'load', trap)
    monkeypatch.setattr(self_check, 'trusted', trap)
    x, b = torch.randn(2, 3, 4, 4), torch.randn(3)
    with pytest.raises(AssertionError, match='CUDA plugin'):
        bias_act.bias_act(x, b, act='lrelu')                              # eagerly the plugin path is taken
    comp = compiled.Compiler('on')
    f = comp.function('bias_act', lambda: (lambda t, bias: bias_act.bias_act(t, bias, act='lrelu')))
    with warnings.catch_warnings():
        warnings.simplefilter('error', compiled.CompileFallbackWarning)
        out = f(x, b)
    torch.testing.assert_close(out, bias_act._bias_act_ref(x, b, act='lrelu'))
    assert f.graphs == 1


def test_cache_dir_default_and_override(monkeypatch, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    import dnnlib
    monkeypatch.setattr(dnnlib.util, '_cache_dir_override', str(tmp_path / 'dnnlib'))
    ours = str(tmp_path / 'dnnlib' / 'inductor' / torch.backends.cpu.get_cpu_capability().lower())
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', default_cache_dir())    # what Inductor writes on first use
    assert compiled.cache_dir() == ours
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path / 'mine'))
    assert compiled.cache_dir() == str(tmp_path / 'mine')
    monkeypatch.delenv('TORCHINDUCTOR_CACHE_DIR')
    assert compiled.use_cache_dir() == ours
    import os
    assert os.environ['TORCHINDUCTOR_CACHE_DIR'] == ours


def test_inversion_and_upsampling_jobs_refuse_an_unknown_mode(tmp_path):
    """The Python API's InversionConfig / UpsampleConfig(compile=...) are checked before anything is loaded or
    written (the CLIs' click.Choice does it for the flags)."""
    import numpy as np
    import PIL.Image

    from inversion.inversion_job import InversionConfig, InversionError, run_inversion
    from inversion.upsample import UpsampleConfig, run_upsample
    PIL.Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / 'a.png')
    expected = "--compile 'sometimes': use one of auto, on, off"
    with pytest.raises(InversionError, match=expected):
        run_inversion(InversionConfig(network=str(tmp_path / 'missing.pkl'), compile='sometimes', progress=False),
                      str(tmp_path / 'a.png'), str(tmp_path / 'out'))
    with pytest.raises(InversionError, match=expected):
        run_upsample(UpsampleConfig(network=str(tmp_path / 'missing.pkl'), target=str(tmp_path / 'a.png'),
                                    compile='sometimes', progress=False), str(tmp_path / 'up'))
    assert not (tmp_path / 'out').exists() and not (tmp_path / 'up').exists()
