"""The safe loader handles the configurations stylegan2-ada-pytorch produces beyond the fixture's:
conditioning labels, FP16 resolutions, 8 mapping layers, other resolutions; and the layout of the
stylegan3 repository's StyleGAN2 (synthesis options at the Generator's top level, other defaults).

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

pytestmark = pytest.mark.pins_numbers

_SOURCE_THAT_MUST_NOT_RUN = 'raise SystemExit("the safe loader executed pickled source")\n'


class _NVRecord:
    """Pickles like a stylegan2-ada-pytorch persistent object (module source + __dict__); with
    `sg3_repo`, like one of the stylegan3 repository (its dense layers keep in/out_features), and
    `init_kwargs` replaces the recorded constructor arguments."""

    def __init__(self, module, init_kwargs=None, sg3_repo=False):
        self.module, self.init_kwargs, self.sg3_repo = module, init_kwargs, sg3_repo

    def __reduce__(self):
        state = dict(self.module.__dict__)
        if self.init_kwargs is not None:
            state['_init_kwargs'] = self.init_kwargs
        if self.sg3_repo and isinstance(self.module, networks.FullyConnectedLayer):
            state['out_features'], state['in_features'] = self.module.weight.shape
        state['_modules'] = {k: (_NVRecord(m, sg3_repo=self.sg3_repo) if persistence.is_persistent(m) else m)
                             for k, m in state['_modules'].items()}
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
        torch.testing.assert_close(G2(z, c, truncation_psi=0.7, noise_mode='const', force_fp32=True), img,
                                   rtol=0, atol=0)
        torch.testing.assert_close(D2(img, c, force_fp32=True), D(img, c, force_fp32=True), rtol=0, atol=0)


# ---------------------------------------------------------------------------- the stylegan3 repository's layout

def _sg3_repo_pair(architecture, fused_default, c_dim):
    """Our G and D built as the stylegan3 repository builds them when num_fp16_res and conv_clamp are
    left at its defaults (4 and 256) and w_avg_beta at 0.998."""
    torch.manual_seed(2)
    G = networks.Generator(z_dim=32, c_dim=c_dim, w_dim=32, img_resolution=32, img_channels=3,
                           mapping_kwargs=dict(num_layers=2, w_avg_beta=0.998),
                           synthesis_kwargs=dict(channel_base=512, channel_max=32, num_fp16_res=4, conv_clamp=256,
                                                 architecture=architecture, fused_modconv_default=fused_default)).eval()
    D = networks.Discriminator(c_dim=c_dim, img_resolution=32, img_channels=3, channel_base=512, channel_max=32,
                               num_fp16_res=4, conv_clamp=256, epilogue_kwargs=dict(mbstd_group_size=2)).eval()
    with torch.no_grad():
        G.mapping.w_avg.normal_()
        for mod in G.modules():
            if isinstance(mod, networks.SynthesisLayer):
                mod.noise_strength.fill_(0.1)
    g_kwargs = dict(z_dim=32, c_dim=c_dim, w_dim=32, img_resolution=32, img_channels=3,
                    mapping_kwargs=dict(num_layers=2), channel_base=512, channel_max=32, architecture=architecture)
    if fused_default is not True:
        g_kwargs['fused_modconv_default'] = fused_default
    d_kwargs = dict(c_dim=c_dim, img_resolution=32, img_channels=3, channel_base=512, channel_max=32,
                    epilogue_kwargs=dict(mbstd_group_size=2))
    return G, D, g_kwargs, d_kwargs


@pytest.mark.parametrize('architecture, fused_default, c_dim', [('skip', True, 0), ('resnet', 'inference_only', 4)])
def test_stylegan3_repository_layout_with_its_defaults(architecture, fused_default, c_dim):
    G, D, g_kwargs, d_kwargs = _sg3_repo_pair(architecture, fused_default, c_dim)
    blob = pickle.dumps(dict(G_ema=_NVRecord(G, g_kwargs, sg3_repo=True), D=_NVRecord(D, d_kwargs, sg3_repo=True)))
    data = checkpoint.load_network_pkl(io.BytesIO(blob))
    G2, D2 = data['G_ema'], data['D']
    assert [G2.synthesis.b8.use_fp16, G2.synthesis.b4.use_fp16, D2.b8.use_fp16] == [True, False, True]
    assert G2.synthesis.b32.conv1.conv_clamp == 256 and D2.b4.conv.conv_clamp == 256
    assert G2.synthesis.b8.fused_modconv_default == fused_default and G2.mapping.w_avg_beta == 0.998
    z = torch.randn(2, 32)
    c = torch.nn.functional.one_hot(torch.tensor([1, 3]), c_dim).float() if c_dim else torch.zeros(2, 0)
    with torch.no_grad():
        img = G(z, c, truncation_psi=0.7, noise_mode='const', force_fp32=True)
        assert torch.equal(G2(z, c, truncation_psi=0.7, noise_mode='const'), img)       # FP32 on the CPU
        assert torch.equal(D2(img, c), D(img, c, force_fp32=True))


def test_settings_that_contradict_the_arguments_are_refused():
    """A record whose kept settings differ from what its arguments rebuild (here FP16 blocks) fails loudly."""
    G, _, g_kwargs, _ = _sg3_repo_pair('skip', True, 0)
    g_kwargs['num_fp16_res'] = 0
    blob = pickle.dumps(dict(G_ema=_NVRecord(G, g_kwargs, sg3_repo=True)))
    with pytest.raises(ValueError, match=r'synthesis\.b\d+\.use_fp16 = True, but the rebuilt network has False'):
        checkpoint.load_network_pkl(io.BytesIO(blob))
