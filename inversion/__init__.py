"""Optimisation-based StyleGAN inversion into w, w+, W and W+ (Poirier-Ginter et al.,
"Overparameterization Improves StyleGAN Inversion", sec. 4).

Modules (import what you need; nothing heavy happens at import time):
    spaces   `LatentSpace`: the optimised tensor and its mapping to the synthesis input.
    losses   LPIPS (lpips package or NVIDIA's vgg16.pt) plus optional pixel terms, per image.
    optimize `Inverter`: batched Adam loop, a generator yielding after every step; resumable.
    targets  listing and decoding target images (folder, file, zip).
    outputs  atomic per-image and per-run files, the LPIPS curve plot, resume state files.
    jobs     `run_job`: the resumable per-image runner (listing, lock, skipped.json, resume, run files).
    runner   `run_inversion`: the inversion job behind invert.py.
    upsample `run_upsample`: the PULSE-style upsampling job behind upsample.py (same runner).
    interpolate  `run_interpolation`: the job behind interpolate.py (paths, images, table-3 metrics).
"""

