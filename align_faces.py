"""Align the faces in a folder of photos as FFHQ was aligned, and paste reconstructions back into the photos:
a thin CLI over `preprocess.align_folder`."""

import click

from preprocess.align_folder import MULTIPLE_MODES, AlignFolderError, align_folder, paste_back_folder
from preprocess.ffhq_align import TRANSFORM_SIZE
from preprocess.landmarks import DetectorUnavailable, DlibDetector
from preprocess.paste_back import DEFAULT_FEATHER

#----------------------------------------------------------------------------

@click.group(invoke_without_command=True, context_settings=dict(max_content_width=120))
@click.option('--source', metavar='DIR|FILE', help='Photos (folder searched recursively, or one file)')
@click.option('--dest', metavar='DIR', help='Where the crops and alignment.jsonl go (same DIR again = resume)')
@click.option('--resolution', type=click.IntRange(min=8), default=1024, show_default=True,
              help='Side of the crops in pixels')
@click.option('--multiple', type=click.Choice(MULTIPLE_MODES), default='largest', show_default=True,
              help='Photos with several faces: align the largest, all (<name>_face<k>.png), or skip them')
@click.option('--min-score', type=float, default=0.0, show_default=True,
              help='Keep detections scoring above this (dlib HOG margin; raise it to drop weak false detections)')
@click.option('--upsample', type=click.IntRange(min=0), default=1, show_default=True,
              help='Times dlib doubles the photo before detecting (more finds smaller faces, slower)')
@click.option('--landmark-model', metavar='DAT',
              help='68-point dlib model; default: the one in face-recognition-models')
@click.option('--transform-size', type=click.IntRange(min=8), default=TRANSFORM_SIZE, show_default=True,
              help='Render the square at this size before the final resize (FFHQ: 4096)')
@click.option('--no-padding', is_flag=True, help='Black outside the photo instead of reflection padding + blur')
@click.option('--overview', metavar='PNG',
              help='Also write a labelled picture of the first photos, their squares and crops '
                   '(keep it outside --dest, which should hold only crops)')
@click.option('--quiet', is_flag=True, help='No progress bar')
@click.pass_context
def main(ctx, source, dest, resolution, multiple, min_score, upsample, landmark_model, transform_size, no_padding,
         overview, quiet):
    """Detect faces (dlib HOG + 68 landmarks), align each as FFHQ was aligned, and write N x N crops.

    Writes <name>.png crops, alignment.jsonl (landmarks, square, transform: what paste-back needs),
    skipped.json (no face, several faces with --multiple skip, unreadable), log.txt and summary.json.

    \b
    python align_faces.py --source photos/ --dest aligned/ --resolution 256
    python align_faces.py --source group.jpg --dest aligned/ --multiple all --overview aligned-overview.png
    python align_faces.py paste-back --aligned aligned/ --reconstructions out/ --pattern '{name}-recon.png' --dest pasted/
    """  # noqa: E501 (the help shows these examples verbatim: one command a line)
    if ctx.invoked_subcommand is not None:
        return
    for name, value in (('source', source), ('dest', dest)):
        if value is None:
            raise click.UsageError(f'--{name} is required')
    try:
        detector = DlibDetector(landmark_model, upsample=upsample, min_score=min_score)
        summary = align_folder(source, dest, resolution, multiple=multiple, detector=detector,
                               transform_size=transform_size, padding=not no_padding, overview=overview,
                               progress=not quiet)
    except (AlignFolderError, DetectorUnavailable) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f'Aligned {summary["crops"]} face(s) from {summary["aligned_photos"]} of {summary["photos"]} photos '
               f'({summary["resumed"]} done before), {summary["skipped"]} skipped (see skipped.json) -> {dest}')


@main.command('paste-back')
@click.option('--aligned', required=True, metavar='DIR', help='The --dest of an alignment run (has alignment.jsonl)')
@click.option('--reconstructions', required=True, metavar='DIR', help='One image per crop (any square size)')
@click.option('--pattern', default='{name}.png', show_default=True,
              help="File name of a crop's reconstruction; invert.py writes '{name}-recon.png'")
@click.option('--dest', required=True, metavar='DIR', help='Where <photo>.png and <photo>-mask.png go')
@click.option('--feather', type=click.FloatRange(0, 0.5), default=DEFAULT_FEATHER, show_default=True,
              help='Fraction of the crop side over which the paste fades out')
@click.option('--quiet', is_flag=True, help='No progress bar')
def paste_back_command(aligned, reconstructions, pattern, dest, feather, quiet):
    """Put reconstructions of aligned crops back into the original photos (inverse transform, soft mask)."""
    if '{name}' not in pattern:
        raise click.BadParameter("must contain '{name}'", param_hint='--pattern')
    try:
        summary = paste_back_folder(aligned, reconstructions, dest, pattern=pattern, feather=feather,
                                    progress=not quiet)
    except AlignFolderError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f'Pasted {summary["pasted"]} of {summary["crops"]} crops into {summary["photos"]} photos, '
               f'{summary["skipped"]} skipped (see skipped.json) -> {dest}')

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()  # click supplies the arguments
