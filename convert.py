"""Convert a StyleGAN2 checkpoint of any supported format into ours, or into rosinality/stylegan2-pytorch's .pt."""

import click

from dnnlib.cli import cli_errors
from training.formats.convert import FORMAT_NAMES, TARGETS, convert


@click.command()
@click.option('--source', required=True, metavar='PATH|URL',
              help="Network file: ours, NVIDIA's PyTorch or TensorFlow pickle, or a rosinality .pt "
                   "(told apart by content)")
@click.option('--dest', required=True, metavar='PATH', help='File to write (atomically: complete or not at all)')
@click.option('--to', 'to', type=click.Choice(TARGETS), required=True,
              help="ours: our pickle (G, D, G_ema as the file has them); rosinality: his .pt (g_ema, latent_avg, g, d)")
@click.option('--trust-pickle', is_flag=True, help='Unpickle without restrictions (only for files you trust)')
@cli_errors
def main(source, dest, to, trust_pickle):
    """Convert a network file; nothing is written when the target format cannot express the networks
    (an overparameterized generator has no rosinality form).

    \b
    # NVIDIA's TensorFlow release (StyleGAN2 / StyleGAN2-ADA), read without TensorFlow:
    python convert.py --source=stylegan2-ffhq-config-f.pkl --dest=ffhq-f.pkl --to=ours
    # A rosinality checkpoint (e4e, pSp, StyleCLIP, GANSpace read these) into our pickle:
    python convert.py --source=550000.pt --dest=ffhq256.pkl --to=ours
    # An NVIDIA PyTorch pickle (or ours) out to rosinality's format:
    python convert.py --source=network-snapshot-025000.pkl --dest=ffhq.pt --to=rosinality
    """
    summary = convert(source, dest, to, trust=trust_pickle, log=lambda line: click.echo(line, err=True))
    load_with = f'; load it with his {summary["load_with"]}' if 'load_with' in summary else ''
    click.echo(f'Wrote {summary["dest"]} ({summary["to"]}: {", ".join(summary["written"])}) from '
               f'{FORMAT_NAMES[summary["source_format"]]} {summary["source"]}{load_with}')


if __name__ == '__main__':
    main()
