"""Two CPU processes (Gloo): one optimizer step matches single-process training on the same global batch, and a
short 2-process training run through train.py's launcher works with rank 0 writing the files."""

import json
import os

import pytest
import torch

from configs import presets
from test_training import read_stats, tiny_config
from torch_utils import distributed
from training import launch, phases as phase_lib
from training.loss import StyleGAN2Loss
from training.networks import Discriminator, Generator

PER_RANK = 2        # images per rank; the minibatch-std group size (2) divides it
WORLD = 2


def tiny_networks():
    torch.manual_seed(0)
    G = Generator(z_dim=32, c_dim=0, w_dim=32, img_resolution=16, img_channels=3, latent_rows=32,
                  mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=256, channel_max=32,
                                        use_noise=False)).train().requires_grad_(False)
    D = Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=256, channel_max=32,
                      epilogue_kwargs=dict(mbstd_group_size=2)).train().requires_grad_(False)
    return G, D


def one_step(images, world_size, rank=0):
    """Gmain, Dmain and Dreg on `images` of the fixed global batch (deterministic: no mixing, no PPL noise).

    Returns the averaged gradients each phase stepped with and the weights afterwards.
    """
    G, D = tiny_networks()
    gen = torch.Generator().manual_seed(123)
    reals = torch.rand([WORLD * PER_RANK, 3, 16, 16], generator=gen) * 2 - 1
    gen_z = [G.sample_z(WORLD * PER_RANK, generator=gen) for _ in range(2)]
    labels = torch.zeros([WORLD * PER_RANK, 0])
    loss = StyleGAN2Loss(device='cpu', G=G, D=D, r1_gamma=1.0, style_mixing_prob=0, pl_weight=0)
    opt = dict(class_name='torch.optim.Adam', lr=0.0025, betas=[0, 0.99], eps=1e-8)
    phases = {p.name: p for p in phase_lib.setup_phases(G, D, opt, opt, G_reg_interval=4, D_reg_interval=16)}

    grads = {}
    original = phase_lib.reduce_gradients_

    def recording(module, ws):
        ok = original(module, ws)
        grads[len(grads)] = [p.grad.clone() for p in module.parameters() if p.grad is not None]
        return ok
    phase_lib.reduce_gradients_ = recording
    try:
        def rounds(x):
            return list(x[images].split(PER_RANK))
        for name, z in [('Gmain', gen_z[0]), ('Dmain', gen_z[1]), ('Dreg', gen_z[1])]:
            assert phase_lib.run_phase(phases[name], loss, rounds(reals), rounds(labels), rounds(z), rounds(labels),
                                       cur_nimg=0, world_size=world_size)
    finally:
        phase_lib.reduce_gradients_ = original
    return dict(grads=grads, G=G.state_dict(), D=D.state_dict())


def _compare_worker(rank, world_size, port, out_path):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    distributed.init()
    try:
        result = one_step(slice(rank * PER_RANK, (rank + 1) * PER_RANK), world_size, rank)
        torch.save(result, f'{out_path}.{rank}')
    finally:
        torch.distributed.destroy_process_group()


pytestmark = [pytest.mark.slow,
              pytest.mark.usefixtures('one_thread')]   # spawned processes too: no OpenMP contention on 2 cores


def test_two_ranks_match_one_process_on_the_global_batch(tmp_path):
    out = str(tmp_path / 'rank')
    torch.multiprocessing.spawn(_compare_worker, args=(WORLD, launch.free_port(), out), nprocs=WORLD, join=True)
    ranks = [torch.load(f'{out}.{r}', weights_only=True) for r in range(WORLD)]
    single = one_step(slice(None), world_size=1)     # same 4 images, accumulated in 2 rounds of 2

    assert len(single['grads']) == len(ranks[0]['grads']) == 3
    for idx in single['grads']:
        for a, b, c in zip(single['grads'][idx], ranks[0]['grads'][idx], ranks[1]['grads'][idx]):
            torch.testing.assert_close(b, c, rtol=0, atol=0)            # all_reduce: identical on every rank
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)      # = the mean over the global batch
    for key in ['G', 'D']:
        for name, tensor in single[key].items():
            if name.endswith('w_avg'):                  # running mean of each rank's own latents
                continue
            torch.testing.assert_close(ranks[0][key][name], ranks[1][key][name], rtol=0, atol=0)
            torch.testing.assert_close(ranks[0][key][name], tensor, rtol=1e-4, atol=1e-6)


def test_two_process_training_run(tmp_path):
    c = tiny_config(_data(tmp_path), rows=32, gpus=WORLD)
    outdir = str(tmp_path / 'runs')
    run_dir = launch.launch_training(c, outdir, 'dist', gpus=WORLD, device_type='cpu', options=dict(num_gpus=WORLD))
    assert os.path.basename(run_dir) == '00000-dist'
    files = os.listdir(run_dir)
    assert {'network-snapshot-000000.016.pkl', 'training-state-000000.016.pt', 'fakes_init.png',
            'training_options.json'} <= set(files)
    assert not [f for f in files if '.tmp' in f]
    log = open(os.path.join(run_dir, 'log.txt')).read()
    assert log.count('Exiting...') == 1                  # only rank 0 writes
    stats = read_stats(run_dir)
    assert stats[-1]['Progress/kimg']['mean'] == pytest.approx(0.016)   # 4 steps of the global batch of 4
    assert stats[-1]['Loss/D/loss']['num'] == WORLD * PER_RANK   # last tick = 1 step; both ranks' values summed
    assert json.load(open(os.path.join(run_dir, 'training_options.json')))['num_gpus'] == WORLD


def _torchrun_worker(rank, world_size, port, c, outdir, result_path):
    """What `torchrun --nproc_per_node=2 train.py ...` gives every process: the environment, then train.py's
    launcher."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    try:
        run_dir = launch.launch_training(c, outdir, 'env', device_type='cpu')
        with open(f'{result_path}.{rank}', 'w') as f:
            f.write(run_dir)
    finally:
        torch.distributed.destroy_process_group()


def test_torchrun_style_launch_agrees_on_run_dir(tmp_path):
    c = tiny_config(_data(tmp_path), gpus=WORLD, kimg=0.008, resume='auto')
    outdir, result = str(tmp_path / 'runs'), str(tmp_path / 'run_dir')
    torch.multiprocessing.spawn(_torchrun_worker, args=(WORLD, launch.free_port(), c, outdir, result), nprocs=WORLD)
    dirs = {open(f'{result}.{r}').read() for r in range(WORLD)}
    assert dirs == {os.path.join(outdir, '00000-env')} and os.listdir(outdir) == ['00000-env']
    assert read_stats(dirs.pop())[-1]['Progress/kimg']['mean'] == pytest.approx(0.008)


def _data(tmp_path):
    from training.tiny_data import write_tiny_dataset
    path = str(tmp_path / 'tiny16.zip')
    write_tiny_dataset(path, num_images=32, resolution=16, seed=0)
    return path


def test_presets_reject_batch_not_divisible_by_gpus(tmp_path):
    with pytest.raises(ValueError, match='multiple of --gpus=3'):
        presets.setup_training_config(cfg='auto', data=_data(tmp_path), gpus=3, batch=4)
