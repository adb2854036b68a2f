"""Shared pytest fixtures: the `../shared` folder beside the repo, tiny network factories."""

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# One intra-op thread: on a busy 2-core machine more threads made small convolutions ~100x slower,
# and results do not depend on the machine's core count.
torch.set_num_threads(1)
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

OPS_DIR = str(REPO / 'torch_utils' / 'ops')

def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: multi-process or end-to-end tests of 10 s and more; CI runs them, '
                                       '`-m "not slow"` leaves them out of a quick run')
    config.addinivalue_line('markers', 'pins_numbers: compares values with pins or tolerances that another CPU\'s '
                                       'kernels could move; tests/cpu_matrix.sh runs these under other kernel sets')

# The CUDA ops' self-check (torch_utils/ops/self_check.py) falls back to the reference path when a
# kernel disagrees with it: in tests that would hide the very bug a CUDA-vs-reference test looks
# for, so it is off unless a test turns it on (tests/test_self_check.py).
os.environ.setdefault('OVERPARAM_OPS_SELF_CHECK', '0')

# Set by .ci/run when nvcc is installed: a kernel test that cannot build must fail, not skip.
REQUIRE_KERNEL_TESTS = os.environ.get('OVERPARAM_REQUIRE_KERNEL_TESTS', '') == '1'


def find_ninja():
    """ninja on PATH, or beside the interpreter (pip installs it into the venv's bin/, which is not
    on PATH when CI runs `.venv/bin/python`). Puts the folder found on PATH for torch's builds."""
    found = shutil.which('ninja')
    if found is None:
        beside = Path(sys.executable).parent / 'ninja'
        if beside.is_file() and os.access(beside, os.X_OK):
            os.environ['PATH'] = str(beside.parent) + os.pathsep + os.environ.get('PATH', '')
            found = str(beside)
    return found


NINJA = find_ninja()


def have_compiler():
    """A C++ compiler and ninja (what custom_ops needs to build anything)."""
    return shutil.which('c++') is not None and NINJA is not None


def have_nvcc():
    """nvcc and a CUDA toolkit with headers (CUDA sources compile even without a GPU)."""
    if shutil.which('nvcc') is None:
        return False
    return any(os.path.isfile(os.path.join(root, 'include', 'cuda_runtime.h')) for root in
               [os.environ.get('CUDA_HOME', ''), os.environ.get('CUDA_PATH', ''), '/usr/local/cuda'])


def skip_without_toolchain(reason):
    """Skip a test that needs a compiler the machine lacks, or fail it when CI requires the kernel tests."""
    if REQUIRE_KERNEL_TESTS:
        pytest.fail(f'kernel test cannot run although CI requires it (nvcc is installed): {reason}', pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def needs_compiler():
    if not have_compiler():
        skip_without_toolchain('needs a C++ compiler and ninja')


@pytest.fixture
def needs_nvcc():
    if not (have_nvcc() and have_compiler()):
        skip_without_toolchain('needs nvcc, a CUDA toolkit and ninja')


# nvcc cannot ask a GPU which architectures to build for: name them (sm_80 A100, sm_90 H100/H200).
# With a GPU torch's default (the device's own architecture) is kept, so that the build tests and
# the ops share one build.
if not torch.cuda.is_available():
    os.environ.setdefault('TORCH_CUDA_ARCH_LIST', '8.0;9.0')


@pytest.fixture(scope='session')
def plugin_build_dir():
    """Build cache shared by every test and session: custom_ops names each build folder after a hash
    of the sources (+ torch/CUDA versions, arch list), so a plugin is compiled once per change.
    `$OVERPARAM_TEST_BUILD_DIR`, else `$TORCH_EXTENSIONS_DIR`, else torch's extension folder."""
    from torch_utils import custom_ops
    root = os.environ.get('OVERPARAM_TEST_BUILD_DIR') or custom_ops._build_root()
    os.makedirs(root, exist_ok=True)
    return root


def emulated_plugin(build_dir, name):
    """The CUDA kernel `torch_utils/ops/<name>.cu` compiled for the host (<name>.cpp with -DOPS_EMULATE, the
    emulator of cuda_emulation.h), so that its arithmetic runs on CPU tensors; cached by content hash in
    `build_dir`. Skips without a C++ compiler (fails instead when CI requires the kernel tests)."""
    if not have_compiler():
        skip_without_toolchain('needs a C++ compiler and ninja')
    from torch_utils import custom_ops
    return custom_ops.get_plugin(f'{name}_emu', [f'{name}.cpp'],
                                 headers=[f'{name}.h', f'{name}.cu', 'cuda_emulation.h'],
                                 source_dir=OPS_DIR, build_dir=build_dir, extra_cflags=['-DOPS_EMULATE', '-O2'])


SHARED = Path(os.environ.get('OVERPARAM_SHARED_DIR', REPO.parent / 'shared'))
FIXTURES = SHARED / 'fixtures'


def shared_fixture(name: str) -> Path:
    """Path of a file in `../shared/fixtures`, or skip the test with the reason."""
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f'{path} not found: the NVIDIA fixtures live in ../shared beside the repo '
                    f'(set OVERPARAM_SHARED_DIR to point elsewhere)')
    return path


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


def tiny_generator_kwargs(latent_rows=None, resolution=32, dim=32, c_dim=0, use_noise=False):
    """Kwargs of a small 2-mapping-layer generator (channels <= `dim`, so R >= dim rows suffice)."""
    return dict(z_dim=dim, c_dim=c_dim, w_dim=dim, img_resolution=resolution, img_channels=3, latent_rows=latent_rows,
                mapping_kwargs=dict(num_layers=2),
                synthesis_kwargs=dict(channel_base=resolution * dim // 2, channel_max=dim, num_fp16_res=0,
                                      conv_clamp=256, use_noise=use_noise))


def tiny_generator_with_mean(latent_rows=None, resolution=16, seed=1):
    """A tiny generator in eval mode, weights from `seed`, with a non-trivial mean latent (w_avg ~ 0.3 N(0, I))."""
    from training import networks
    torch.manual_seed(seed)
    G = networks.Generator(**tiny_generator_kwargs(latent_rows=latent_rows, resolution=resolution)).eval()
    G.mapping.w_avg.copy_(torch.randn(G.w_dim) * 0.3)
    return G


def float64_copy(net):
    """A copy of `net` that computes in float64 (exact references: a metric's value then no longer depends on the
    CPU's float32 kernels). Resampling filters stay float32, the dtype the ops take them in."""
    import copy
    net = copy.deepcopy(net)
    for module in net.modules():
        for group in (module._parameters, module._buffers):
            for name, tensor in group.items():
                if tensor is not None and tensor.is_floating_point() and name != 'resample_filter':
                    tensor.data = tensor.data.double()
    return net


def tiny_discriminator_kwargs(resolution=32, dim=32, c_dim=0):
    return dict(c_dim=c_dim, img_resolution=resolution, img_channels=3, channel_base=resolution * dim // 2,
                channel_max=dim, conv_clamp=256, epilogue_kwargs=dict(mbstd_group_size=2))


@pytest.fixture
def one_thread(monkeypatch):
    """One intra-op thread here and in spawned processes (OMP_NUM_THREADS): on a loaded 2-core machine OpenMP
    contention makes small convolutions ~100x slower. The thread count is restored afterwards."""
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Killed(Exception):
    """The simulated kill of `kill_inversion_at`."""


def kill_inversion_at(monkeypatch, step):
    """Make `Inverter.run` raise `Killed` right after it yields `step` (what was saved before survives, the step
    itself is lost, as with a killed process); returns a callable that puts the real `run` back."""
    from inversion import optimize
    original = optimize.Inverter.run

    def run_then_die(self, max_steps=None):
        for info in original(self, max_steps):
            yield info
            if info['step'] == step:
                raise Killed()
    monkeypatch.setattr(optimize.Inverter, 'run', run_then_die)
    return lambda: monkeypatch.setattr(optimize.Inverter, 'run', original)
