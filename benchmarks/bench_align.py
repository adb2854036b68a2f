"""FFHQ face alignment on scikit-image's astronaut (512 x 512): time of detection + landmarks, of the warp at
several `transform_size`s (FFHQ's 4096 vs smaller), and of paste-back; how far smaller sizes move the pixels.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_align --resolution 256 --resolution 1024

Prints one JSON line per (resolution, transform_size) and a summary table.
"""

import json
import time

import click
import numpy as np

from benchmarks.timing import time_fn
from preprocess.ffhq_align import align_face
from preprocess.landmarks import DlibDetector
from preprocess.paste_back import paste_back

#----------------------------------------------------------------------------

@click.command()
@click.option('--resolution', 'resolutions', type=int, multiple=True, default=[256, 1024], show_default=True)
@click.option('--transform-size', 'sizes', type=int, multiple=True, default=[4096, 2048, 1024], show_default=True)
@click.option('--iters', type=int, default=3, show_default=True)
def main(resolutions, sizes, iters):
    """Time the alignment pieces; compare transform sizes with FFHQ's 4096."""
    import skimage.data  # pylint: disable=import-outside-toplevel
    photo = skimage.data.astronaut()
    start = time.perf_counter()
    detector = DlibDetector()
    detector(photo[:64, :64])
    load_s = time.perf_counter() - start
    no_sync = lambda: None
    detect_ms = time_fn(lambda: detector(photo), iters, 1, no_sync)
    landmarks = detector(photo)[0].landmarks
    rows = []
    for n in resolutions:
        reference = align_face(photo, landmarks, n, transform_size=4096).image.astype(np.int16)
        for size in sizes:
            warp_ms = time_fn(lambda: align_face(photo, landmarks, n, transform_size=size), iters, 1, no_sync)
            face = align_face(photo, landmarks, n, transform_size=size)
            paste_ms = time_fn(lambda: paste_back(photo, face.image, face.quad), iters, 1, no_sync)
            diff = np.abs(face.image.astype(np.int16) - reference)
            row = dict(resolution=n, transform_size=size, align_ms=round(warp_ms, 1), paste_back_ms=round(paste_ms, 1),
                       mean_abs_diff_vs_4096=round(float(diff.mean()), 3), max_abs_diff_vs_4096=int(diff.max()))
            rows.append(row)
            print(json.dumps(row))
    print(f'\ndlib load {load_s:.2f} s, detect + 68 landmarks {detect_ms:.0f} ms (512 x 512, upsample 1)')
    print(f'{"N":>5} {"T":>5} {"align ms":>9} {"ratio":>6} {"paste ms":>9} {"mean|d|":>8} {"max|d|":>7}')
    for r in rows:
        base = next(b for b in rows if b['resolution'] == r['resolution'] and b['transform_size'] == sizes[0])
        print(f'{r["resolution"]:5d} {r["transform_size"]:5d} {r["align_ms"]:9.1f} '
              f'{r["align_ms"] / base["align_ms"]:6.2f} {r["paste_back_ms"]:9.1f} '
              f'{r["mean_abs_diff_vs_4096"]:8.3f} {r["max_abs_diff_vs_4096"]:7d}')


if __name__ == '__main__':
    main()  # click supplies the arguments
