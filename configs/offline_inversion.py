"""The inversion loss used offline, where NVIDIA's vgg16.pt (StyleGAN2's LPIPS) cannot be loaded.

Its stand-in, the lpips package's VGG16 with a seeded *random* trunk (`vgg-random`), is nearly blind to
colour and intensity: with LPIPS alone, inversions find the right shapes in washed-out colours, and their
PSNR/SSIM say little. A pixel term fixes that: the loss is LPIPS(vgg-random) + MSE_WEIGHT * MSE
(+ L1_WEIGHT * L1), MSE and L1 over [0, 1] intensities (`inversion.losses.InversionLoss`). The weight
was chosen on the 30-kimg `tiny-overparam` generator so that W beats w in PSNR and SSIM as well as in
LPIPS (docs/reproducing.md). The paper's loss (LPIPS only, NVIDIA's VGG16) stays the default of
invert.py; the quickstart and `benchmarks.tiny_paper_tables` use this one when they fall back to the
random trunk. invert.py: `--lpips vgg-random --mse-weight MSE_WEIGHT --l1-weight L1_WEIGHT`.
"""

LPIPS = 'vgg-random'
MSE_WEIGHT = 0.1
L1_WEIGHT = 0.0


def loss_kwargs():
    """Fields of `inversion.inversion_job.InversionConfig` for this loss."""
    return dict(lpips=LPIPS, mse_weight=MSE_WEIGHT, l1_weight=L1_WEIGHT)


def describe():
    """One line for summaries and docs."""
    extra = f' + {L1_WEIGHT:g} * L1' if L1_WEIGHT else ''
    return f'LPIPS ({LPIPS}: lpips package VGG16 with a seeded random trunk) + {MSE_WEIGHT:g} * MSE{extra}'
