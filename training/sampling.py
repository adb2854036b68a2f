"""Latents from seeds and batched image synthesis: the reusable core of generate.py."""

import numpy as np
import torch

#----------------------------------------------------------------------------

def latent_from_seed(G, seed, device=None):
    """`[1, *G.z_shape]` latent of one seed. For vector latents this is NVIDIA's convention
    (`RandomState(seed).randn(1, z_dim)`), so seeds give the same images as their generate.py."""
    return G.sample_z(1, generator=np.random.RandomState(seed), device=device)


def class_label(G, class_idx, batch_size, device=None):
    """One-hot labels `[batch, c_dim]` (empty `[batch, 0]` for unconditional nets)."""
    c = torch.zeros([batch_size, G.c_dim], device=device)
    if G.c_dim > 0:
        if class_idx is None:
            raise ValueError('this network is conditional: pass a class label (--class)')
        if not 0 <= class_idx < G.c_dim:
            raise ValueError(f'class {class_idx} out of range: the network has {G.c_dim} classes')
        c[:, class_idx] = 1
    return c

#----------------------------------------------------------------------------

@torch.no_grad()
def generate_images(G, seeds, truncation_psi=1.0, truncation_cutoff=None, noise_mode='const', class_idx=None,
                    batch_size=16, device=torch.device('cpu')):
    """Images `[len(seeds), C, H, W]` in [-1, 1] (float32, on CPU), generated `batch_size` at a time."""
    out = []
    for i in range(0, len(seeds), batch_size):
        chunk = seeds[i:i + batch_size]
        z = torch.cat([latent_from_seed(G, s, device=device) for s in chunk])
        c = class_label(G, class_idx, len(chunk), device=device)
        img = G(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, noise_mode=noise_mode)
        out.append(img.float().cpu())
    return torch.cat(out)

#----------------------------------------------------------------------------
