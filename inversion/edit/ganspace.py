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
from tqdm import tqdm

from dnnlib.cli import parse_range
from figures import curves, sheets
from inversion import optimize, run_files
from inversion.run_files import save_npz
from torch_utils import checkpoint
from torch_utils.files import atomic_write, check_outdir, make_outdir, save_json
from torch_utils.image_io import save_png
from training.latent_spaces import LatentSpace

#----------------------------------------------------------------------------

@torch.no_grad()
def iter_latents(G, n, seed=0, batch=1024, device=None):
    """Yield `n` latents sampled through the mapping network (no truncation), chunk by chunk.

    Each chunk is a float32 CPU tensor `[m, w_dim]` (baseline) or `[m * R, w_dim]` (rows of W
    matrices); `batch` counts latents (matrices), so a chunk holds at most `batch * R` rows. The
    sequence is deterministic for a given (seed, batch) (one torch.Generator drawn chunk by chunk).
    """
    if int(batch) < 1 or int(n) < 0:
        raise ValueError(f'--batch must be a positive integer and the sample count non-negative, got {batch}, {n}')
    device = torch.device(device) if device is not None else G.mapping.w_avg.device
    gen = torch.Generator(device=device).manual_seed(int(seed))
    c = None
    done = 0
    while done < n:
        m = min(int(batch), n - done)
        z = G.sample_z(m, generator=gen, device=device)
        if G.c_dim > 0:
            c = torch.zeros([m, G.c_dim], device=device)                 # Unconditional use: no label.
        ws = G.mapping(z, c, skip_w_avg_update=True)                      # [m, L, (R,) w_dim]
        yield ws[:, 0].reshape(-1, G.w_dim).float().cpu()                 # Same latent for every layer.
        done += m


def sample_latents(G, n, seed=0, batch=1024, device=None):
    """All of `iter_latents` in one float32 CPU tensor `[n, w_dim]` or `[n * R, w_dim]` (small n only:
    `fit` streams instead)."""
    return torch.cat(list(iter_latents(G, n, seed=seed, batch=batch, device=device)))


class CovarianceAccumulator:
    """Running float64 sums of x and x x^T over batches `[m, d]`, for PCA in bounded memory.

    Sums are of `x - shift` (shift = the first batch's mean; the covariance does not depend on it)
    so that large means do not cancel catastrophically. Memory: two `[d]` and one `[d, d]` float64.
    """

    def __init__(self):
        self.n, self.shift, self.s1, self.s2 = 0, None, None, None

    def add(self, x):
        x = torch.as_tensor(x).to(torch.float64)
        if self.shift is None:
            self.shift = x.mean(dim=0)
            self.s1 = torch.zeros_like(self.shift)
            self.s2 = torch.zeros([x.shape[1], x.shape[1]], dtype=torch.float64)
        xs = x - self.shift
        self.s1 += xs.sum(dim=0)
        self.s2 += xs.T @ xs
        self.n += x.shape[0]

    def mean_cov(self):
        """(mean `[d]`, unbiased covariance `[d, d]`), float64."""
        if self.n < 2:
            raise ValueError('PCA needs at least 2 samples')
        m = self.s1 / self.n
        cov = (self.s2 - self.n * torch.outer(m, m)) / (self.n - 1)
        return self.shift + m, (cov + cov.T) / 2


def fit_pca_streaming(chunks, num_components=None, progress=None):
    """`fit_pca` of the concatenation of `chunks` (an iterable of `[m, d]`) without holding it:
    float64 running sums (`CovarianceAccumulator`). progress: callable(rows) per chunk, or None.
    Returns `fit_pca`'s dict plus num_vectors (rows seen)."""
    acc = CovarianceAccumulator()
    for x in chunks:
        acc.add(x)
        if progress is not None:
            progress(x.shape[0])
    mean, cov = acc.mean_cov()
    return dict(_pca_from_cov(mean, cov, num_components), num_vectors=acc.n)


def fit_pca(x, num_components=None):
    """PCA of samples `x [n, d]` in float64 (covariance eigendecomposition via `torch.linalg.eigh`).

    Returns dict of float32 tensors: mean `[d]`, components `[k, d]` (orthonormal rows, by decreasing
    variance; sign fixed so the largest-|.| entry is positive), explained_variance `[k]` (eigenvalues of
    the unbiased covariance), explained_variance_ratio `[k]` (fraction of the total variance).
    """
    x = torch.as_tensor(x).to(torch.float64)
    n, _d = x.shape
    if n < 2:
        raise ValueError('PCA needs at least 2 samples')
    mean = x.mean(dim=0)
    xc = x - mean
    return _pca_from_cov(mean, xc.T @ xc / (n - 1), num_components)


def _pca_from_cov(mean, cov, num_components=None):
    """`fit_pca`'s dict from a float64 mean `[d]` and covariance `[d, d]`."""
    d = cov.shape[0]
    k = d if num_components is None else min(int(num_components), d)
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

#----------------------------------------------------------------------------

def run_fit(network, outdir, *, num_samples=100000, num_components=20, seed=0, batch=None, device=None,
            trust_pickle=False, progress=True):
    """Fit GANSpace PCA for a checkpoint; writes components.npz, explained_variance.json/.png. Returns a summary dict.

    The covariance is accumulated batch by batch (`fit_pca_streaming`): memory is one batch of rows
    plus `[w_dim, w_dim]` float64 sums, whatever `num_samples` (holding all rows would take
    num_samples * R * w_dim * 4 bytes: 98 GiB at 100000 samples, R = w_dim = 512)."""
    if int(num_samples) < 2:
        raise ValueError(f'--num-samples {num_samples}: PCA needs at least 2 samples')
    if int(num_components) < 1:
        raise ValueError(f'--components {num_components}: keep at least 1 component')
    if batch is not None and int(batch) < 1:
        raise ValueError(f'--batch {batch}: must be a positive integer')
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    check_outdir(outdir)
    G, _local, sha256 = checkpoint.load_frozen_network(network, trust=trust_pickle, device=device, option='--network')
    G = G.to(device)
    rows = G.latent_rows or 1
    if batch is None:
        batch = max(1, 65536 // rows)
    with tqdm(total=int(num_samples) * rows, desc='latent rows' if G.latent_rows else 'latents', unit='row',
              unit_scale=True, disable=not progress, dynamic_ncols=True) as bar:
        pca = fit_pca_streaming(iter_latents(G, int(num_samples), seed=seed, batch=batch, device=device),
                                num_components, progress=bar.update)
    num_vectors = pca.pop('num_vectors')
    outdir = Path(make_outdir(outdir))
    save_pca(outdir / 'components.npz', pca, latent_rows=np.int64(G.latent_rows or 0), num_ws=np.int64(G.num_ws),
             num_samples=np.int64(num_samples), seed=np.int64(seed), network_sha256=np.array(sha256))
    info = dict(network_sha256=sha256, num_samples=int(num_samples), num_vectors=int(num_vectors),
                vectors='W rows' if G.latent_rows else 'w', latent_rows=G.latent_rows, seed=int(seed),
                explained_variance=pca['explained_variance'].tolist(),
                explained_variance_ratio=pca['explained_variance_ratio'].tolist(),
                cumulative_ratio=np.cumsum(pca['explained_variance_ratio'].numpy()).tolist())
    save_json(outdir / 'explained_variance.json', info)
    curves.explained_variance(outdir / 'explained_variance.png', pca['explained_variance_ratio'].numpy())
    return info


def edit_params(params, space, components, index, strength, layers, std=None):
    """`edit` on latents in their own space: params `[N, *space.param_shape]` -> (edited, space).

    All layers: the space is kept (a vector/matrix moves by `strength * std * v` on every row).
    Some layers of a shared space (w, W): the result needs the per-layer space (w+, W+).
    """
    layers = sorted(layers)
    all_layers = layers == list(range(space.num_ws))
    if not space.per_layer and not all_layers:
        space = LatentSpace(space.name + '+', space.num_ws, space.w_dim, space.latent_rows)
        params = params.unsqueeze(1).expand(params.shape[0], space.num_ws, *params.shape[1:])
    if space.per_layer:
        return edit(params, components, index, strength, layers, std=std), space
    return edit(params.unsqueeze(1), components, index, strength, None, std=std)[:, 0], space


def _strength_label(s):
    return f'{s:+g}' if s else '0'


def run_edit(network, outdir, components, *, component, strengths, layers='all', seeds=None, latents=None,
             truncation=1.0, device=None, trust_pickle=False, allow_other_network=False):
    """Edit seeds' or inverted latents along principal directions (`component`: an index or a list).

    Writes per component c and strength s: `images/<name>-c<c>-s<s>.png` (titled, upscaled to
    >= 128 px), `edits.png` (one titled block per component: rows = images, columns = strengths),
    `edits.npz` (the edited latents in latents.npz format, names `<name>-c<c>-s<s>`: render them
    with `generate.py --latents`) and edits.json. Refuses components fitted on another network file
    (components.npz's network_sha256) unless allow_other_network. Returns the edits.json dict."""
    if (seeds is None) == (latents is None):
        raise ValueError('give exactly one of seeds or latents')
    component_list = [int(component)] if np.ndim(component) == 0 else [int(c) for c in component]
    if not component_list:
        raise ValueError('--component: give at least one component index')
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    check_outdir(outdir)
    pca = load_pca(components)
    G, _local, sha256 = checkpoint.load_frozen_network(network, trust=trust_pickle, device=device, option='--network')
    G = G.to(device)
    fitted_on = str(pca.get('network_sha256', ''))
    if fitted_on and fitted_on != sha256 and not allow_other_network:
        raise ValueError(f'{components} was fitted on another network (sha256 {fitted_on[:12]}..., --network is '
                         f'{sha256[:12]}...): fit it on this network, or pass --allow-other-network')
    if pca['components'].shape[1] != G.w_dim:
        raise ValueError(f'components are {pca["components"].shape[1]}-dimensional, the network has w_dim {G.w_dim}')
    bad = [c for c in component_list if not 0 <= c < pca['components'].shape[0]]
    if bad:
        raise ValueError(f'component {bad[0]} outside 0..{pca["components"].shape[0] - 1}')
    layer_list = parse_layers(layers, G.num_ws)
    with torch.no_grad():
        if seeds is not None:
            names = [f'seed{s:04d}' for s in seeds]
            z = torch.cat([G.sample_z(1, generator=np.random.RandomState(s), device=device) for s in seeds])
            c = torch.zeros([len(seeds), G.c_dim], device=device) if G.c_dim else None
            ws = G.mapping(z, c, truncation_psi=truncation, skip_w_avg_update=True)
            space = LatentSpace.for_generator(G, 'W' if G.latent_rows else 'w')
            params = ws[:, 0].clone()                                     # Every layer gets the same latent.
        else:
            names, space, params, _sha = run_files.read_latents(latents, G)
            params = params.to(device)
    out_names, out_latents, out_space, blocks, stds = [], [], None, [], []
    outdir_path = Path(make_outdir(outdir))
    for comp in component_list:
        std = float(pca['explained_variance'][comp].sqrt())
        stds.append(std)
        cells = []                                                        # [S][N, H, W, C]
        for s in strengths:
            edited, out_space = edit_params(params, space, pca['components'], comp, s, layer_list, std=std)
            images = optimize.render(G, out_space, edited, device=device)
            cells.append(images)
            for i, name in enumerate(names):
                label = f'{name}-c{comp}-s{_strength_label(s)}'
                caption = [f'component {comp}', f'strength {_strength_label(s)}']
                save_png(outdir_path / 'images' / f'{label}.png', sheets.titled(sheets.upscale(images[i]), caption))
                out_names.append(label)
                out_latents.append(edited[i].cpu().numpy())
        grid = np.stack([np.stack([sheets.upscale(cells[q][i]) for q in range(len(strengths))])
                         for i in range(len(names))])                     # [N, S, h, w, C]
        blocks.append(sheets.labelled_grid(grid, col_labels=[f'strength {_strength_label(s)}' for s in strengths],
                                    row_labels=names, title=f'component {comp} (std {std:.3g}), layers '
                                                            f'{_layers_label(layer_list, G.num_ws)}'))
    save_png(outdir_path / 'edits.png', sheets.stack_rows(blocks, gap=6))
    save_npz(outdir_path / 'edits.npz', names=np.array(out_names, dtype=str), latents=np.stack(out_latents),
             space=np.array(out_space.name), checkpoint_sha256=np.array(sha256), num_ws=out_space.num_ws,
             w_dim=out_space.w_dim, latent_rows=-1 if out_space.latent_rows is None else out_space.latent_rows)
    info = dict(network_sha256=sha256, components=str(components), components_network_sha256=fitted_on or None,
                component=component_list[0] if len(component_list) == 1 else component_list,
                components_edited=component_list, strengths=[float(s) for s in strengths], layers=layer_list,
                std=stds[0] if len(stds) == 1 else stds, images=names, edited_latents='edits.npz',
                edited_space=out_space.name, edited_names=out_names,
                source='seeds' if seeds is not None else str(latents), truncation=float(truncation),
                grid='one block per component: rows = images, columns = strengths')
    save_json(outdir_path / 'edits.json', info)
    return info


def _layers_label(layers, num_ws):
    if layers == list(range(num_ws)):
        return 'all'
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f'{layers[0]}-{layers[-1]}'
    return ','.join(map(str, layers))

#----------------------------------------------------------------------------
