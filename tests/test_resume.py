"""Exact resume: a tiny run stopped after N ticks and resumed ends bitwise equal to an uninterrupted run (every
network, both Adam states, augment p, pl_mean, counters, RNG), with and without data-loader workers."""

import os

import pytest
import torch

from configs import presets
from training import snapshot
from training.tiny_data import write_tiny_dataset
from training.training_loop import TrainingRun, training_loop

pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def data16(tmp_path_factory):
    path = tmp_path_factory.mktemp('data') / 'tiny16.zip'
    write_tiny_dataset(str(path), num_images=24, resolution=16, seed=0)
    return str(path)


def config(data, workers, **overrides):
    """8 steps of 4 images (a tick every 2 steps), every random stream in use: style mixing, path length (every 2
    steps), R1 (every 4), ADA with a fast p (0.16 per adjustment, every 4 steps), latent matrices."""
    opts = dict(cfg='auto', data=data, rows=32, dim=32, cbase=256, cmax=32, batch=4, mbstd=2, precision='fp32',
                kimg=0.032, tick=0.008, snap=1, workers=workers, grid=2, metrics=[], gamma=0.05, G_reg=2, D_reg=4,
                aug='ada', augpipe='bgc')
    opts.update(overrides)
    c = presets.setup_training_config(**opts)
    c.ada_kimg, c.ada_target = 0.1, -1.0          # p rises by 0.16 at every adjustment
    c.keep_states = None
    return c


def assert_states_equal(a, b):
    """Two training states hold bitwise the same networks, optimizers, loss state, counters and RNG states."""
    for key in ('G', 'D', 'G_ema', 'augment_pipe'):
        assert a['networks'][key].keys() == b['networks'][key].keys()
        for name, tensor in a['networks'][key].items():
            assert torch.equal(tensor, b['networks'][key][name]), (key, name)
    for key in ('G', 'D'):
        sa, sb = a['optimizers'][key]['state'], b['optimizers'][key]['state']
        assert sa.keys() == sb.keys() and len(sa) > 0
        for idx in sa:
            for name, value in sa[idx].items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb[idx][name])), (key, idx, name)
    assert torch.equal(a['loss']['pl_mean'], b['loss']['pl_mean'])
    for key in ('cur_nimg', 'batch_idx', 'skipped_steps', 'ada_num', 'ada_sum'):
        assert a['progress'][key] == b['progress'][key], key
    assert torch.equal(a['rng'][0]['cpu'], b['rng'][0]['cpu'])


@pytest.mark.parametrize('workers', [0, 2])
def test_killed_and_resumed_run_is_bitwise_equal_to_uninterrupted(data16, tmp_path, workers):
    full = training_loop(run_dir=str(tmp_path / 'full'), verbose=False, **config(data16, workers))
    assert full['cur_nimg'] == 32 and full['skipped_steps'] == 0

    ticks = []
    killed = training_loop(run_dir=str(tmp_path / 'killed'), verbose=False, **config(data16, workers),
                           progress_fn=lambda *a: ticks.append(a), abort_fn=lambda: len(ticks) >= 1)
    assert killed['aborted'] and killed['cur_nimg'] == 12          # ticks at 4 and 12 images: mid ADA interval
    cut = snapshot.load_training_state(killed['training_state'])
    assert cut['progress']['ada_num'] == 16        # D(real) signs since the last p update: 3 Dmain + 1 Dreg x 4 images
    run = TrainingRun.from_kwargs(run_dir=str(tmp_path / 'probe'), verbose=False,
                                  **dict(config(data16, workers), resume_pkl=killed['training_state']))
    try:
        assert (run.progress.ada_num, run.progress.ada_sum) == (16, cut['progress']['ada_sum'])
    finally:
        run.close()
    resumed = training_loop(run_dir=str(tmp_path / 'killed'), verbose=False,
                            **dict(config(data16, workers), resume_pkl=killed['training_state']))
    assert resumed['cur_nimg'] == 32 and not resumed['aborted']

    a = snapshot.load_training_state(full['training_state'])
    b = snapshot.load_training_state(resumed['training_state'])
    assert a['progress']['batch_idx'] == 8
    assert float(a['networks']['augment_pipe']['p']) > 0, 'ADA moved p (the test covers its accumulator)'
    assert float(a['loss']['pl_mean']) > 0
    assert_states_equal(a, b)
    # The export pickles of the last snapshot agree too (G_ema is what users generate with).
    assert os.path.basename(full['snapshot_pkl']) == os.path.basename(resumed['snapshot_pkl'])


def test_snapshots_below_one_kimg_do_not_collide(data16, tmp_path):
    summary = training_loop(run_dir=str(tmp_path / 'run'), verbose=False, **config(data16, 0, kimg=0.016))
    pkls = sorted(f for f in os.listdir(tmp_path / 'run') if f.startswith('network-snapshot-'))
    states = [os.path.basename(p) for p in snapshot.list_states(str(tmp_path / 'run'))]
    assert pkls == ['network-snapshot-000000.004.pkl', 'network-snapshot-000000.012.pkl',
                    'network-snapshot-000000.016.pkl']
    assert states == ['training-state-000000.004.pt', 'training-state-000000.012.pt', 'training-state-000000.016.pt']
    assert summary['snapshot_pkl'].endswith('network-snapshot-000000.016.pkl')
    assert snapshot.snapshot_name(25000) == 'network-snapshot-000025.pkl'   # NVIDIA's names at whole kimg
    assert snapshot.state_for_snapshot(summary['snapshot_pkl']).endswith('training-state-000000.016.pt')
