"""The safe loader handles the configurations stylegan2-ada-pytorch produces beyond the fixture's:
conditioning labels, FP16 resolutions, 8 mapping layers, other resolutions.

Pickles are written here in NVIDIA's record format (`_reconstruct_persistent_obj(meta)` with
`class_name`, `module_src` and the object's `__dict__` as `state`) from networks built with the
same constructor arguments NVIDIA's code takes, and must come back with identical outputs.
"""

import io
import pickle

import pytest
import torch

from torch_utils import checkpoint, persistence
from training import networks

_SOURCE_THAT_MUST_NOT_RUN = 'raise SystemExit("the safe loader executed pickled source")\n'


class _NVRecord:
    """Pickles like a stylegan2-ada-pytorch persistent object (module source + __dict__)."""

    def __init__(self, module):
        self.module = module

    def __reduce__(self):
        state = dict(self.module.__dict__)
        state['_modules'] = {k: (_NVRecord(m) if persistence.is_persistent(m) else m) for k, m in state['_modules'].items()}
        meta = dict(type='class', version=6, module_src=_SOURCE_THAT_MUST_NOT_RUN,
                    class_name=type(self.module).__name__, state=state)
        return (persistence._reconstruct_persistent_obj, (meta,))


def dump_nvlabs_style(data):
    return pickle.dumps({k: (_NVRecord(v) if isinstance(v, torch.nn.Module) else v) for k, v in data.items()})


CONFIGS = {
    'conditional': dict(c_dim=4),
    'fp16-res': dict(num_fp16_res=2),
    'mapping8': dict(mapping_layers=8),
    'res64-noise': dict(resolution=64),
}


@pytest.mark.parametrize('name', list(CONFIGS))
def test_nvlabs_style_snapshot_round_trip(name):
    cfg = {**dict(c_dim=0, num_fp16_res=0, mapping_layers=2, resolution=32), **CONFIGS[name]}
    res, c_dim = cfg['resolution'], cfg['c_dim']
    torch.manual_seed(0)
    G = networks.Generator(z_dim=32, c_dim=c_dim, w_dim=32, img_resolution=res, img_channels=3,
                           mapping_kwargs=dict(num_layers=cfg['mapping_layers']),
                           synthesis_kwargs=dict(channel_base=512, channel_max=32, num_fp16_res=cfg['num_fp16_res'],
                                                 conv_clamp=256)).eval()
    D = networks.Discriminator(c_dim=c_dim, img_resolution=res, img_channels=3, channel_base=512, channel_max=32,
                               num_fp16_res=cfg['num_fp16_res'], conv_clamp=256,
                               epilogue_kwargs=dict(mbstd_group_size=2)).eval()
    with torch.no_grad():                                  # non-trivial buffers and noise strengths
        G.mapping.w_avg.normal_()
        for mod in G.modules():
            if isinstance(mod, networks.SynthesisLayer):
                mod.noise_strength.fill_(0.1)
    blob = dump_nvlabs_style(dict(G=G, D=D, G_ema=G, augment_pipe=None, training_set_kwargs=dict(resolution=res)))
    assert b'_reconstruct_persistent_obj' in blob and b'the safe loader executed' in blob
    data = checkpoint.load_network_pkl(io.BytesIO(blob))

    G2, D2 = data['G_ema'], data['D']
    assert type(G2) is networks.Generator and G2.mapping.num_layers == cfg['mapping_layers']
    z = torch.randn(2, 32)
    c = torch.nn.functional.one_hot(torch.tensor([1, 3]), c_dim).float() if c_dim else torch.zeros(2, 0)
    with torch.no_grad():
        img = G(z, c, truncation_psi=0.7, noise_mode='const', force_fp32=True)
        torch.testing.assert_close(G2(z, c, truncation_psi=0.7, noise_mode='const', force_fp32=True), img, rtol=0, atol=0)
        torch.testing.assert_close(D2(img, c, force_fp32=True), D(img, c, force_fp32=True), rtol=0, atol=0)
