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


def have_compiler():
    """A C++ compiler and ninja (what custom_ops needs to build anything)."""
    return shutil.which('c++') is not None and shutil.which('ninja') is not None


def have_nvcc():
    """nvcc and a CUDA toolkit with headers (CUDA sources compile even without a GPU)."""
    if shutil.which('nvcc') is None:
        return False
    return any(os.path.isfile(os.path.join(root, 'include', 'cuda_runtime.h')) for root in
               [os.environ.get('CUDA_HOME', ''), os.environ.get('CUDA_PATH', ''), '/usr/local/cuda'])


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
                synthesis_kwargs=dict(channel_base=resolution * dim // 2, channel_max=dim, num_fp16_res=0, conv_clamp=256,
                                      use_noise=use_noise))


def tiny_discriminator_kwargs(resolution=32, dim=32, c_dim=0):
    return dict(c_dim=c_dim, img_resolution=resolution, img_channels=3, channel_base=resolution * dim // 2, channel_max=dim,
                conv_clamp=256, epilogue_kwargs=dict(mbstd_group_size=2))
