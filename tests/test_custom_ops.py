"""Tests of torch_utils.custom_ops: building the CUDA extensions with nvcc, the build
cache, error reporting, and the ref/CUDA dispatch with its warn-once fallback."""

import os
import time
import warnings

import pytest
import torch

from conftest import OPS_DIR
from torch_utils import custom_ops
from torch_utils.ops import bias_act, upfirdn2d

#----------------------------------------------------------------------------
# Building

@pytest.mark.slow
def test_compile_cuda_plugins(needs_nvcc, plugin_build_dir):
    """Compile both CUDA extensions with nvcc (no GPU needed: explicit arch list, see conftest).

    The build goes to the session's shared cache, keyed by a hash of the sources: compiled once per
    change of the sources, reused by later sessions and by the ops themselves.
    """
    start = time.time()
    modules = {}
    for name, func in (('bias_act', 'bias_act'), ('upfirdn2d', 'upfirdn2d')):
        try:
            modules[name] = custom_ops.get_plugin(f'{name}_plugin', [f'{name}.cpp', f'{name}.cu'],
                                                  headers=[f'{name}.h'], source_dir=OPS_DIR,
                                                  build_dir=plugin_build_dir)
        except RuntimeError as exc:
            cause = exc.__cause__
            # Compiled, but the .so could not be imported on a machine without a driver.
            if (isinstance(cause, (ImportError, OSError))
                    and ('cuda' in str(cause).lower() or 'driver' in str(cause).lower())):
                pytest.skip(f'built, but importing needs a CUDA driver: {cause}')
            raise
        assert hasattr(modules[name], func)
        built = os.path.dirname(modules[name].__file__)
        assert os.path.basename(built).startswith(f'{name}_plugin-') and os.path.dirname(built) == plugin_build_dir
    print(f'bias_act + upfirdn2d CUDA plugins ready in {time.time() - start:.1f} s')
    # The bindings run their argument checks: CPU tensors are refused with a clear error.
    with pytest.raises(RuntimeError, match='CUDA tensor'):
        modules['bias_act'].bias_act(torch.zeros(2), torch.zeros(0), torch.zeros(0), torch.zeros(0),
                                     torch.zeros(0), 0, 1, 1, 0.0, 1.0, -1.0)
    with pytest.raises(RuntimeError, match='CUDA tensor'):
        modules['upfirdn2d'].upfirdn2d(torch.zeros(1, 1, 2, 2), torch.ones(1, 1), 1, 1, 1, 1, 0, 0, 0, 0,
                                       False, 1.0)
    # Second request: served from the in-process cache, no rebuild.
    again = custom_ops.get_plugin('bias_act_plugin', ['bias_act.cpp', 'bias_act.cu'], headers=['bias_act.h'],
                                  source_dir=OPS_DIR, build_dir=plugin_build_dir)
    assert again is modules['bias_act']

_TINY = """
#include <pybind11/pybind11.h>
int answer() { return %d; }
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("answer", &answer); }
"""

def test_get_plugin_cache_key_and_errors(needs_compiler, tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    (src / 'tiny.cpp').write_text(_TINY % 42)
    build = tmp_path / 'build'
    mod = custom_ops.get_plugin('tiny_ext_a', ['tiny.cpp'], source_dir=str(src), build_dir=str(build))
    assert mod.answer() == 42
    assert custom_ops.get_plugin('tiny_ext_a', ['tiny.cpp'], source_dir=str(src), build_dir=str(build)) is mod
    # Changed contents -> a new hashed build folder.
    (src / 'tiny.cpp').write_text(_TINY % 7)
    mod7 = custom_ops.get_plugin('tiny_ext_b', ['tiny.cpp'], source_dir=str(src), build_dir=str(build))
    assert mod7.answer() == 7
    assert len(list(build.glob('tiny_ext_*-*'))) == 2
    # A compile error surfaces as RuntimeError carrying the compiler's message, and is remembered.
    (src / 'broken.cpp').write_text('int broken( { return this_symbol_does_not_exist; }\n')
    with pytest.raises(RuntimeError, match='this_symbol_does_not_exist'):
        custom_ops.get_plugin('broken_ext', ['broken.cpp'], source_dir=str(src), build_dir=str(build))
    with pytest.raises(RuntimeError, match='broken_ext'):
        custom_ops.get_plugin('broken_ext', ['broken.cpp'], source_dir=str(src), build_dir=str(build))
    with pytest.raises(RuntimeError, match='missing source'):
        custom_ops.get_plugin('nothing', ['nope.cpp'], source_dir=str(src), build_dir=str(build))

#----------------------------------------------------------------------------
# Dispatch and fallback

PLUGINS = [bias_act._plugin, upfirdn2d._plugin]

def _run_ops(x, impl=None):
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device=x.device)
    return [bias_act.bias_act(x, torch.ones(x.shape[1], device=x.device), act='lrelu', impl=impl),
            upfirdn2d.upsample2d(x, f, impl=impl)]

def _ref_ops(x):
    return _run_ops(x, impl='ref')

@pytest.fixture
def failing_build(monkeypatch):
    """Every plugin build fails; records the build attempts."""
    calls = []
    def fake_get_plugin(module_name, *args, **kwargs):
        calls.append(module_name)
        raise RuntimeError(f'simulated build failure of {module_name}')
    monkeypatch.setattr(custom_ops, 'get_plugin', fake_get_plugin)
    for p in PLUGINS:
        monkeypatch.setattr(p, 'module', None)
        monkeypatch.setattr(p, 'error', None)
        monkeypatch.setattr(p, 'warned', False)
    return calls

def test_cpu_tensor_uses_ref_silently(failing_build):
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        got = _run_ops(x)
    assert failing_build == []
    for g, r in zip(got, _ref_ops(x)):
        torch.testing.assert_close(g, r)
    with pytest.raises(ValueError, match='CUDA tensor'):
        bias_act.bias_act(x, impl='cuda')
    with pytest.raises(ValueError, match='CUDA tensor'):
        upfirdn2d.upfirdn2d(x, None, impl='cuda')

def test_simulated_failure_warns_once_and_falls_back(failing_build, monkeypatch):
    """CPU tensors posing as CUDA ones: the fallback logic without a GPU."""
    monkeypatch.setattr(custom_ops, '_is_cuda_tensor', lambda t: isinstance(t, torch.Tensor))
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        first = _run_ops(x)
        second = _run_ops(x)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages                 # one per op, not per call
    assert all('simulated build failure' in m for m in messages)
    assert sorted(failing_build) == ['bias_act_plugin', 'upfirdn2d_plugin']   # no retry
    for a, b, r in zip(first, second, _ref_ops(x)):
        torch.testing.assert_close(a, r)
        torch.testing.assert_close(b, r)
    with pytest.raises(RuntimeError, match='simulated build failure'):
        bias_act.bias_act(x, impl='cuda')
    with pytest.raises(RuntimeError, match='simulated build failure'):
        upfirdn2d.upfirdn2d(x, None, impl='cuda')

@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device on this machine')
def test_simulated_failure_on_real_cuda_tensor(failing_build):
    x = torch.randn(2, 3, 4, 4, device='cuda')
    with pytest.warns(RuntimeWarning, match='simulated build failure') as record:
        got = _run_ops(x)
        _run_ops(x)
    assert len(record) == 2
    for g, r in zip(got, _ref_ops(x)):
        torch.testing.assert_close(g, r)
    with pytest.raises(RuntimeError, match='simulated build failure'):
        bias_act.bias_act(x, impl='cuda')

def test_bad_impl_rejected():
    with pytest.raises(ValueError):
        bias_act.bias_act(torch.zeros(1, 2), impl='triton')

#----------------------------------------------------------------------------

#----------------------------------------------------------------------------
# The test toolchain probes (tests/conftest.py)

def test_find_ninja_beside_the_interpreter(tmp_path, monkeypatch):
    """pip's ninja lives in the venv's bin/, which is not on PATH when CI runs .venv/bin/python."""
    import conftest
    empty, venv_bin = tmp_path / 'empty', tmp_path / 'venv' / 'bin'
    empty.mkdir()
    venv_bin.mkdir(parents=True)
    ninja = venv_bin / 'ninja'
    ninja.write_text('#!/bin/sh\necho 1.11.1\n')
    ninja.chmod(0o755)
    monkeypatch.setenv('PATH', str(empty))
    monkeypatch.setattr(conftest.sys, 'executable', str(venv_bin / 'python'))
    assert conftest.find_ninja() == str(ninja)
    assert os.environ['PATH'].split(os.pathsep)[0] == str(venv_bin)   # torch's build finds it too
    ninja.unlink()
    monkeypatch.setenv('PATH', str(empty))
    assert conftest.find_ninja() is None

def test_missing_toolchain_fails_when_ci_requires_kernel_tests(monkeypatch):
    import conftest
    monkeypatch.setattr(conftest, 'REQUIRE_KERNEL_TESTS', True)
    with pytest.raises(pytest.fail.Exception, match='CI requires it'):
        conftest.skip_without_toolchain('needs a C++ compiler and ninja')
    monkeypatch.setattr(conftest, 'REQUIRE_KERNEL_TESTS', False)
    with pytest.raises(pytest.skip.Exception):
        conftest.skip_without_toolchain('needs a C++ compiler and ninja')
