"""Build a training zip from an image folder, a zip of images, or procedural shapes.

Examples::

    python dataset_tool.py --source tiny:1000 --dest data/tiny32.zip --resolution 32
    python dataset_tool.py --source ~/photos --dest data/photos256.zip --resolution 256
    python dataset_tool.py --source faces.zip --dest data/faces64.zip --resolution 64 --max-images 5000
"""

import click

from dnnlib.util import cli_errors
from training.dataset_convert import TRANSFORMS, ConversionError, convert_dataset


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
@cli_errors(ConversionError)
def main(source, dest, resolution, transform, max_images, upscale, quiet):
    """Convert images into a dataset zip for train.py (00000/img00000000.png + dataset.json).

    Every file of the source ends up in the zip or in the list of skipped files (printed, and
    stored as skipped.json in the zip) with its reason.
    """
    result = convert_dataset(source, dest, resolution=resolution, transform=transform,
                             max_images=max_images, upscale=upscale, progress=not quiet)
    click.echo(result.summary())


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
