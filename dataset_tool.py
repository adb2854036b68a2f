"""Build a training zip from an image folder, a zip of images, or procedural shapes.

Examples::

    python dataset_tool.py --source tiny:1000 --dest data/tiny32.zip --resolution 32
    python dataset_tool.py --source ~/photos --dest data/photos256.zip --resolution 256
    python dataset_tool.py --source faces.zip --dest data/faces64.zip --resolution 64 --max-images 5000
    python dataset_tool.py --source ~/photos --dest data/faces256.zip --resolution 256 --align
"""

import os

import click

from dnnlib.cli import cli_errors
from preprocess.align_folder import MULTIPLE_MODES, AlignFolderError, align_folder
from training.dataset_convert import TRANSFORMS, ConversionError, convert_dataset, parse_resolution


@click.command(context_settings={'help_option_names': ['-h', '--help']})
@click.option('--source', required=True, metavar='PATH',
              help='Image folder (searched recursively), zip of images, or tiny:N[:SEED] for procedural shapes.')
@click.option('--dest', required=True, metavar='ZIP', help='Output .zip path (written atomically).')
@click.option('--resolution', metavar='INT', default=None,
              help='Output side length, a power of two (e.g. 32 or 32x32). Default for tiny: 32.')
@click.option('--transform', type=click.Choice(TRANSFORMS), default='center-crop', show_default=True,
              help='center-crop: square crop + LANCZOS resize; center-crop-wide: keep full width, '
                   'crop or letterbox vertically; none: images must already be RESxRES.')
@click.option('--max-images', type=click.IntRange(min=1), default=None, metavar='INT',
              help='Stop after writing this many images.')
@click.option('--upscale', is_flag=True, help='Allow images smaller than --resolution (upsampled) instead of skipping.')
@click.option('--quiet', is_flag=True, help='No progress bar.')
@click.option('--align', is_flag=True,
              help='First align the faces of --source as FFHQ was (align_faces.py); the crops, alignment.jsonl and '
                   'skipped.json (photos without a face) are kept in DEST without .zip + "-aligned/".')
@click.option('--align-multiple', type=click.Choice(MULTIPLE_MODES), default='largest', show_default=True,
              help='--align: photos with several faces: the largest, all, or skip them.')
@cli_errors(ConversionError, AlignFolderError)
def main(source, dest, resolution, transform, max_images, upscale, quiet, align, align_multiple):
    """Convert images into a dataset zip for train.py (00000/img00000000.png + dataset.json).

    Every file of the source ends up in the zip or in the list of skipped files (printed, and
    stored as skipped.json in the zip) with its reason.
    """
    if align:
        side = parse_resolution(resolution) if resolution is not None else None
        if side is None or str(source).startswith('tiny:'):
            raise click.UsageError('--align needs --resolution and a folder of photos as --source')
        aligned_dir = os.path.splitext(dest)[0] + '-aligned'
        aligned = align_folder(source, aligned_dir, side,
                               multiple=align_multiple, progress=not quiet)
        click.echo(f'Aligned {aligned["crops"]} faces of {aligned["photos"]} photos ({aligned["skipped"]} skipped, '
                   f'reasons in {aligned_dir}/skipped.json)')
        if aligned['crops'] + aligned['resumed'] == 0:
            raise click.ClickException(f'--align: no face found in --source {source}')
        source, transform = aligned_dir, 'none'
    result = convert_dataset(source, dest, resolution=resolution, transform=transform,
                             max_images=max_images, upscale=upscale, progress=not quiet)
    click.echo(result.summary())


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
