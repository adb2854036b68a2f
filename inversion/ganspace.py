"""GANSpace (Harkonen et al. 2020) on StyleGAN2 and on the overparameterized generator
(Poirier-Ginter et al., "Overparameterization Improves StyleGAN Inversion", sec. 5.2).

Principal directions are found by PCA of sampled intermediate latents, and an image is edited
by moving its latent along one direction over a chosen range of synthesis layers.

Which vectors are analysed (`sample_latents`):
    baseline (latent vectors)       the w vectors, `[n, w_dim]`.
    overparameterized (matrices)    the ROWS of sampled W matrices, `[n * R, w_dim]`. The mapping
                                    network maps every row independently and the marginal law of
                                    a row does not depend on its index (rows of Z are exchangeable),
                                    so the rows are identically distributed samples of one
                                    row-agnostic distribution (paper sec. 5.2): PCA of the rows is
                                    PCA of that distribution. PCA of flattened matrices would be
                                    R * w_dim = 262144-dimensional at the paper's size: intractable.
                                    Rows of one matrix are correlated (shared z~), which does not
                                    bias the covariance estimate, only makes it noisier per sample.

Editing (`edit`): `ws [N, num_ws, (R,) w_dim]` -> `ws + strength * std_k * v_k` on the chosen layers;
for matrices every row moves by the same direction `v_k` (a rank-one, row-tied shift).
"""

import zipfile
from pathlib import Path

import numpy as np
import torch

from dnnlib.util import atomic_write, check_outdir, make_outdir, parse_range
from torch_utils.image_io import make_grid, save_json, save_png, to_uint8

from .runner import load_generator
from .spaces import LatentSpace

#----------------------------------------------------------------------------

@torch.no_grad()
def sample_latents(G, n, seed=0, batch=1024, device=None):
    """Sample `n` latents through the mapping network (no truncation).

    Returns float32 CPU tensor: `[n, w_dim]` (baseline) or `[n * R, w_dim]` (rows of W matrices).
    For matrix networks `batch` counts matrices; keep `batch * R` moderate. The result is deterministic
    for a given (seed, batch) (one torch.Generator drawn chunk by chunk).
    """
    if int(batch) < 1 or int(n) < 0:
        raise ValueError(f'--batch must be a positive integer and the sample count non-negative, got {batch}, {n}')
    device = torch.device(device) if device is not None else G.mapping.w_avg.device
    gen = torch.Generator(device=device).manual_seed(int(seed))
    c = None
    chunks = []
    done = 0
    while done < n:
        m = min(int(batch), n - done)
        z = G.sample_z(m, generator=gen, device=device)
        if G.c_dim > 0:
            c = torch.zeros([m, G.c_dim], device=device)                 # Unconditional use: no label.
        ws = G.mapping(z, c, skip_w_avg_update=True)                      # [m, L, (R,) w_dim]
        w = ws[:, 0]                                                      # Same latent for every layer.
        chunks.append(w.reshape(-1, G.w_dim).float().cpu())
        done += m
    return torch.cat(chunks)


def fit_pca(x, num_components=None):
    """PCA of samples `x [n, d]` in float64 (covariance eigendecomposition via `torch.linalg.eigh`).

    Returns dict of float32 tensors: mean `[d]`, components `[k, d]` (orthonormal rows, by decreasing
    variance; sign fixed so the largest-|.| entry is positive), explained_variance `[k]` (eigenvalues of
    the unbiased covariance), explained_variance_ratio `[k]` (fraction of the total variance).
    """
    x = torch.as_tensor(x).to(torch.float64)
    n, d = x.shape
    if n < 2:
        raise ValueError('PCA needs at least 2 samples')
    k = d if num_components is None else min(int(num_components), d)
    mean = x.mean(dim=0)
    xc = x - mean
    cov = xc.T @ xc / (n - 1)                                             # [d, d]
    evals, evecs = torch.linalg.eigh(cov)                                 # Ascending.
    order = torch.argsort(evals, descending=True)
    evals, evecs = evals[order].clamp_min(0), evecs[:, order]
    comps = evecs.T[:k]                                                   # [k, d]
    idx = comps.abs().argmax(dim=1)
    signs = torch.sign(comps[torch.arange(k), idx])
    comps = comps * signs[:, None]
    total = evals.sum().clamp_min(1e-300)
    return dict(mean=mean.float(), components=comps.float(), explained_variance=evals[:k].float(),
                explained_variance_ratio=(evals[:k] / total).float())


def save_pca(path, pca, **extra):
    """Write a `fit_pca` dict (plus `extra` arrays/scalars) to an .npz file."""
    arrays = {k: (v.cpu().numpy() if torch.is_tensor(v) else np.asarray(v)) for k, v in {**pca, **extra}.items()}

    def write(tmp):
        with open(tmp, 'wb') as f:
            np.savez(f, **arrays)
    atomic_write(path, write)


def _read_npz(path, keys, what):
    """{key: array} of the .npz at `path`; ValueError naming the file (and `what` it should be) otherwise."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise ValueError(f'{path} has no {", ".join(missing)}: it is not {what}')
            return {k: data[k] for k in data.files}
    except FileNotFoundError as err:
        raise ValueError(f'{path} does not exist: pass {what}') from err
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        if str(path) in str(err):
            raise
        raise ValueError(f'{path} cannot be read ({" ".join(str(err).split())[:120]}): pass {what}') from err


def load_pca(path):
    """Read `save_pca` output -> dict with the four PCA tensors (float32) and any extra numpy arrays."""
    out = _read_npz(path, ('mean', 'components', 'explained_variance', 'explained_variance_ratio'),
                    'a components.npz written by `ganspace.py fit`')
    for k in ('mean', 'components', 'explained_variance', 'explained_variance_ratio'):
        out[k] = torch.from_numpy(out[k]).float()
    return out

#----------------------------------------------------------------------------

def parse_layers(spec, num_ws):
    """'all' | 'a-b' (inclusive) | 'a,b,c' -> sorted list of layer indices in [0, num_ws)."""
    spec = str(spec).strip()
    if spec in ('all', ''):
        return list(range(num_ws))
    layers = set(parse_range(spec))
    bad = [i for i in layers if not 0 <= i < num_ws]
    if bad:
        raise ValueError(f'layers {bad} outside 0..{num_ws - 1}')
    return sorted(layers)


def edit(ws, components, index, strength, layers=None, std=None):
    """Move latents along principal direction `index`.

    Args:
        ws:         `[N, num_ws, w_dim]` (baseline) or `[N, num_ws, R, w_dim]` (matrices).
        components: `[k, w_dim]` orthonormal directions.
        index:      which direction.
        strength:   step in units of the direction's std (`std`), or in latent units if `std` is None.
        layers:     layer indices to edit (None = all).
        std:        standard deviation along the direction (sqrt of its explained variance).
    Returns:
        a new tensor like `ws`; strength 0 returns an exact copy. Every row of a matrix moves by
        the same vector.
    """
    out = ws.clone()
    if strength == 0:
        return out
    v = components[index].to(device=ws.device, dtype=ws.dtype)
    step = float(strength) * (1.0 if std is None else float(std))
    layers = list(range(ws.shape[1])) if layers is None else list(layers)
    out[:, layers] = out[:, layers] + step * v                            # Broadcast over rows.
    return out

#----------------------------------------------------------------------------

def plot_explained_variance(path, ratio, size=(640, 400)):
    """Bar chart of explained variance ratios `[k]` with the cumulative curve, drawn with PIL."""
    import PIL.Image
    import PIL.ImageDraw
    ratio = np.asarray(ratio, dtype=np.float64)
    w, h = size
    left, right, top, bottom = 50, 20, 30, 40
    img = PIL.Image.new('RGB', size, 'white')
    d = PIL.ImageDraw.Draw(img)
    d.text((left, 8), 'Explained variance ratio (bars) and cumulative (line)', fill='black')
    d.rectangle([left, top, w - right, h - bottom], outline='black')
    k = max(len(ratio), 1)
    pw, ph = w - left - right, h - top - bottom
    bw = pw / k
    for i, r in enumerate(ratio):
        x0 = left + i * bw + 1
        d.rectangle([x0, top + ph * (1 - r), x0 + max(bw - 2, 1), top + ph], fill=(70, 110, 200))
    cum = np.cumsum(ratio)
    pts = [(left + (i + 0.5) * bw, top + ph * (1 - c)) for i, c in enumerate(cum)]
    if len(pts) > 1:
        d.line(pts, fill=(220, 60, 40), width=2)
    for frac in (0, 0.5, 1):
        y = top + ph * (1 - frac)
        d.text((5, y - 6), f'{frac:.1f}', fill='black')
    d.text((left, h - bottom + 8), f'component 0..{k - 1}', fill='black')
    atomic_write(path, lambda tmp: img.save(tmp, format='PNG'))

#----------------------------------------------------------------------------

def run_fit(network, outdir, *, num_samples=100000, num_components=20, seed=0, batch=None, device=None,
            trust_pickle=False):
    """Fit GANSpace PCA for a checkpoint; writes components.npz, explained_variance.json/.png. Returns a summary dict."""
    if int(num_samples) < 2:
        raise ValueError(f'--num-samples {num_samples}: PCA needs at least 2 samples')
    if int(num_components) < 1:
        raise ValueError(f'--components {num_components}: keep at least 1 component')
    if batch is not None and int(batch) < 1:
        raise ValueError(f'--batch {batch}: must be a positive integer')
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    check_outdir(outdir)
    G, sha256 = load_generator(network, trust_pickle=trust_pickle, device=device)
    G = G.to(device)
    rows = G.latent_rows or 1
    if batch is None:
        batch = max(1, 65536 // rows)
    x = sample_latents(G, int(num_samples), seed=seed, batch=batch, device=device)
    pca = fit_pca(x, num_components)
    outdir = Path(make_outdir(outdir))
    save_pca(outdir / 'components.npz', pca, latent_rows=np.int64(G.latent_rows or 0), num_ws=np.int64(G.num_ws),
             num_samples=np.int64(num_samples), seed=np.int64(seed), network_sha256=np.array(sha256))
    info = dict(network_sha256=sha256, num_samples=int(num_samples), num_vectors=int(x.shape[0]),
                vectors='W rows' if G.latent_rows else 'w', latent_rows=G.latent_rows, seed=int(seed),
                explained_variance=pca['explained_variance'].tolist(),
                explained_variance_ratio=pca['explained_variance_ratio'].tolist(),
                cumulative_ratio=np.cumsum(pca['explained_variance_ratio'].numpy()).tolist())
    save_json(outdir / 'explained_variance.json', info)
    plot_explained_variance(outdir / 'explained_variance.png', pca['explained_variance_ratio'].numpy())
    return info


def run_edit(network, outdir, components, *, component, strengths, layers='all', seeds=None, latents=None,
             truncation=1.0, device=None, trust_pickle=False):
    """Edit seeds' or inverted latents along one principal direction; writes edits.png (rows = images,
    columns = strengths) and edits.json. Returns the edits.json dict."""
    if (seeds is None) == (latents is None):
        raise ValueError('give exactly one of seeds or latents')
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    check_outdir(outdir)
    pca = load_pca(components)
    G, sha256 = load_generator(network, trust_pickle=trust_pickle, device=device)
    G = G.to(device)
    if pca['components'].shape[1] != G.w_dim:
        raise ValueError(f'components are {pca["components"].shape[1]}-dimensional, the network has w_dim {G.w_dim}')
    if not 0 <= component < pca['components'].shape[0]:
        raise ValueError(f'component {component} outside 0..{pca["components"].shape[0] - 1}')
    layer_list = parse_layers(layers, G.num_ws)
    std = float(pca['explained_variance'][component].sqrt())
    with torch.no_grad():
        if seeds is not None:
            names = [f'seed{s:04d}' for s in seeds]
            z = torch.cat([G.sample_z(1, generator=np.random.RandomState(s), device=device) for s in seeds])
            c = torch.zeros([len(seeds), G.c_dim], device=device) if G.c_dim else None
            ws = G.mapping(z, c, truncation_psi=truncation, skip_w_avg_update=True).clone()
        else:
            data = _read_npz(latents, ('names', 'space', 'latents'), 'the latents.npz of an invert.py run')
            names = [str(n) for n in data['names']]
            space = LatentSpace.for_generator(G, str(data['space']))
            ws = space.to_ws(torch.from_numpy(data['latents']).float().to(device)).clone()
        rows = []
        for s in strengths:
            img = G.synthesis(edit(ws, pca['components'], component, s, layer_list, std=std), noise_mode='const',
                              force_fp32=True)
            rows.append(to_uint8(img))                                    # [N, H, W, C] per strength
    grid_imgs = np.stack(rows, axis=1).reshape(-1, *rows[0].shape[1:])    # Row-major: image, then strength.
    outdir = Path(make_outdir(outdir))
    save_png(outdir / 'edits.png', make_grid(grid_imgs, cols=len(strengths)))
    info = dict(network_sha256=sha256, components=str(components), component=int(component),
                strengths=[float(s) for s in strengths], layers=layer_list, std=std, images=names,
                source='seeds' if seeds is not None else str(latents), truncation=float(truncation),
                grid='rows = images, columns = strengths')
    save_json(outdir / 'edits.json', info)
    return info

#----------------------------------------------------------------------------
