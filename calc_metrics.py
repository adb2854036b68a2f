"""Compute metrics of a generator checkpoint and/or an inversion run; append them as JSON lines."""

import os

import click
import torch

import dnnlib
from dnnlib.cli import cli_errors
from inversion import run_files
from metrics import detectors, metric_main
from torch_utils import checkpoint, compiled, distributed
from torch_utils.files import check_outdir
from training.encoder import load_encoder_pkl

#----------------------------------------------------------------------------

def _parse_metrics(value):
    names = [m.strip() for m in value.split(',') if m.strip()]
    bad = [m for m in names if not metric_main.is_valid_metric(m)]
    if bad or not names:
        raise click.BadParameter(f'{", ".join(bad) or "none given"}; '
                                 f'valid: {", ".join(metric_main.list_valid_metrics())}')
    return names


@click.command()
@click.option('--network', 'network_pkl', help='Checkpoint path or URL (not needed for recon metrics only)')
@click.option('--metrics', 'metric_list', default='fid50k_full', show_default=True, help='Comma-separated metric names')
@click.option('--data', '--target', 'data',
              help='Real images (zip or folder); default: the dataset recorded in the checkpoint. encoder_recon: the '
                   'images to reconstruct (required)')
@click.option('--encoder', 'encoder_pkl', metavar='PKL',
              help='Encoder pickle from train_encoder.py (encoder_recon); --network defaults to its generator')
@click.option('--mirror', is_flag=True, help='x-flip the real images (legacy metrics only; *_full ignore it)')
@click.option('--gpus', type=click.IntRange(min=1), default=1, show_default=True,
              help='Expected processes (launch with torchrun)')
@click.option('--detector-path',
              help="Local Inception/VGG16 TorchScript file or folder, 'inception=P,vgg16=P', or random:DIM:SEED")
@click.option('--inversion-run', type=click.Path(file_okay=False), help='Inversion output folder (recon metrics)')
@click.option('--run-dir', '--outdir', 'run_dir',
              help='Where metric-<name>.jsonl is appended [default: next to the network]')
@click.option('--num-images', type=click.IntRange(min=2),
              help='Quick run: generated images / PPL samples and a cap on real images')
@click.option('--seed', type=int, default=0, show_default=True, help='Seed of latents, labels and KID subsets')
@click.option('--batch', 'batch_size', type=click.IntRange(min=1), default=64, show_default=True,
              help='Images per detector call')
@click.option('--workers', 'num_workers', type=click.IntRange(min=0), default=3, show_default=True,
              help='Data loader workers')
@click.option('--trunc', 'truncation_psi', type=float, default=1.0, show_default=True,
              help='Truncation psi of generated images')
@click.option('--device', default=None, help='Device [default: cuda:LOCAL_RANK if available, else cpu]')
@click.option('--no-cache', is_flag=True, help='Recompute dataset features instead of reading the cache')
@click.option('--trust-pickle', is_flag=True, help='Unpickle without restrictions (only for files you trust)')
@click.option('--verbose/--quiet', default=True, show_default=True, help='Progress bars')
@click.option('--compile', 'compile_mode', type=click.Choice(compiled.MODES), default='auto', show_default=True,
              help=compiled.CLI_HELP + ' (the generator of FID/KID/PR)')
@cli_errors
def main(network_pkl, metric_list, data, encoder_pkl, mirror, gpus, detector_path, inversion_run, run_dir, num_images,
         seed, batch_size, num_workers, truncation_psi, device, no_cache, trust_pickle, verbose, compile_mode):
    """Compute metrics and append each to <run-dir>/metric-<name>.jsonl.

    \b
    python calc_metrics.py --network=run/network-snapshot-001000.pkl --metrics=fid50k_full,ppl2_wend
    python calc_metrics.py --network=net.pkl --data=ffhq256.zip --metrics=fid50k_full --num-images=5000
    python calc_metrics.py --inversion-run=out/invert-W --metrics=recon
    python calc_metrics.py --encoder=enc/encoder-snapshot-000100.pkl --target=heldout.zip --metrics=encoder_recon
    torchrun --nproc_per_node=4 calc_metrics.py --network=net.pkl --gpus=4

    Offline machines: pass NVIDIA's inception-2015-12-05.pt / vgg16.pt with --detector-path.
    """
    names = _parse_metrics(metric_list)
    distributed.init()
    rank, world = distributed.get_rank(), distributed.get_world_size()
    if gpus != world and rank == 0:
        click.echo(f'Note: --gpus={gpus} but {world} process(es) running; using {world} '
                   '(launch with torchrun for more).', err=True)
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    device = torch.device(device or (f'cuda:{local_rank}' if torch.cuda.is_available() else 'cpu'))

    E = None
    if encoder_pkl and 'encoder_recon' not in names:
        raise click.UsageError('--encoder is used by the encoder_recon metric only: add it to --metrics')
    if 'encoder_recon' in names:
        E, network_pkl = _load_encoder(encoder_pkl, network_pkl, trust_pickle, device)
        if data is None:
            raise click.UsageError('--target DIR|ZIP (the images to reconstruct) is required for encoder_recon')

    G, recorded_data = None, None
    if any(metric_main.needs_generator(m) for m in names):
        if not network_pkl:
            raise click.UsageError('--network is required for '
                                   f'{", ".join(m for m in names if metric_main.needs_generator(m))}')
        pkl = checkpoint.load_network_pkl(network_pkl, trust=trust_pickle, device=device)
        G = checkpoint.network_in(pkl, network_pkl, 'G_ema', option='--network')
        recorded_data = (pkl.get('training_set_kwargs') or {}).get('path')
    pairs = None
    if any(m in ('recon', 'recon_pixel') for m in names):
        if not inversion_run:
            raise click.UsageError('--inversion-run is required for the recon metrics')
        try:
            pairs = run_files.read_pairs(inversion_run)                 # Every rank: each measures a share.
        except (OSError, ValueError) as err:
            raise click.ClickException(dnnlib.util.one_line(err))

    dataset_kwargs = {}
    if data is None and recorded_data is not None and not os.path.exists(recorded_data):
        if any(metric_main.needs_dataset(m) for m in names):
            raise click.UsageError(f'{network_pkl} records the dataset {recorded_data}, which is not found from '
                                   f'{os.getcwd()}: pass --data PATH')
        recorded_data = None
    data = data or recorded_data
    if data is not None:
        dataset_kwargs = dict(class_name='training.dataset.ImageFolderDataset', path=data, max_size=None, xflip=mirror,
                              use_labels=bool(G is not None and G.c_dim != 0),
                              resolution=G.img_resolution if G is not None else None)
    elif any(metric_main.needs_dataset(m) or (m.startswith('ppl') and G.c_dim) for m in names):
        raise click.UsageError('--data is required: the checkpoint records no dataset')

    if run_dir is None:
        if E is not None and os.path.isfile(encoder_pkl):
            run_dir = os.path.dirname(os.path.abspath(encoder_pkl))
        elif network_pkl and os.path.isfile(network_pkl):
            run_dir = os.path.dirname(os.path.abspath(network_pkl))
        elif inversion_run:
            run_dir = inversion_run
    if run_dir is not None:
        check_outdir(run_dir, '--run-dir')

    for name in names:
        try:
            result = metric_main.calc_metric(name, G=G, dataset_kwargs=dataset_kwargs, num_gpus=world, rank=rank,
                                             device=device, G_kwargs=dict(truncation_psi=truncation_psi),
                                             detector_path=detector_path, num_gen=num_images, max_real=num_images,
                                             seed=seed, batch_size=batch_size, num_workers=num_workers,
                                             cache=not no_cache, progress=verbose, inversion_pairs=pairs,
                                             encoder=E, compile=compile_mode)
        except (detectors.DetectorUnavailableError, FileNotFoundError, ValueError) as err:
            raise click.ClickException(str(err).splitlines()[0] if str(err) else type(err).__name__)
        if rank == 0:
            metric_main.report_metric(result, run_dir=run_dir,
                                      snapshot_pkl=encoder_pkl if name == 'encoder_recon' else network_pkl)
    distributed.shutdown()


def _load_encoder(encoder_pkl, network_pkl, trust_pickle, device):
    """(the encoder of --encoder, the generator to use: --network, else the one the encoder pickle records)."""
    if not encoder_pkl:
        raise click.UsageError('--encoder PKL is required for encoder_recon')
    try:
        data = load_encoder_pkl(encoder_pkl, device=device, trust_pickle=trust_pickle)
    except (OSError, ValueError) as err:
        raise click.ClickException(dnnlib.util.one_line(err))
    if not network_pkl:
        network_pkl = data.get('generator_pkl')
        if not isinstance(network_pkl, str) or not network_pkl:
            raise click.UsageError(f'--network is required: {encoder_pkl} records no generator_pkl')
        click.echo(f'Generator from the encoder pickle: {network_pkl}', err=True)
    return data['E'], network_pkl

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()
