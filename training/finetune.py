"""Starting a run from a pretrained StyleGAN2: its architecture and weights, R latent rows, the preset's training.

`adopt_resume_source(c)` rewrites a run's `training_loop` kwargs `c` for its resume source (`c.resume_pkl`):

- a network file (any format `torch_utils.checkpoint.load_network_pkl` reads): the networks are built with the
  checkpoint's architecture (resolution, widths, mapping depth, noise inputs, conditioning: its constructor
  arguments) instead of the preset's; the run's options keep what is training, not architecture (latent rows,
  precision: FP16 layers and clamping, the minibatch-std group). When the checkpoint's generator has latent
  vectors and the run has R rows, this is a **fine-tuning start**: G, G_ema and D start from the checkpoint's
  weights (w_avg included; the rows change the latent's shape, not the parameters, eq. 2), the image counter from
  `resume_kimg`, optimizers fresh, and the rows start as `training.row_start` says. A file without a D starts a
  fresh one. A generator already overparameterized with other rows is refused, as is a StyleGAN3 (by the loader).
- a training state of a fine-tuning run (or its network snapshot beside one): the architecture and the row
  start that the state recorded (`c.finetune`, saved in every training state), so a killed fine-tuning run
  resumes exactly like any run.

What came from where is the record `c.finetune` (None unless fine-tuning): training_options.json holds it, the
loop logs it, training states keep it.
"""

import copy
import inspect
import json
import os

import dnnlib
from torch_utils import checkpoint, files, persistence
from training import networks, row_start, snapshot
from training.resume import ResumeError, check_resume_file

#----------------------------------------------------------------------------

# The row start of fine-tuning runs when the options do not say (`--row-start`, `--row-spread-kimg`).
DEFAULT_ROW_START = 'paper'
DEFAULT_SPREAD_KIMG = 2.0

# Constructor arguments that the run's options set (dotted paths); every other one comes from the checkpoint.
G_FROM_OPTIONS = ('latent_rows', 'synthesis_kwargs.num_fp16_res', 'synthesis_kwargs.conv_clamp')
D_FROM_OPTIONS = ('num_fp16_res', 'conv_clamp', 'epilogue_kwargs.mbstd_group_size')
# Given by the dataset when the loop builds the networks (training.run_setup.build_networks): must agree.
DATASET_SHAPE = ('c_dim', 'img_resolution', 'img_channels')
NETWORK_CLASSES = dict(G=networks.Generator, D=networks.Discriminator)


class FinetuneError(ResumeError):
    """A resume source that cannot start this run; the message is one line naming the file and the fix."""

#----------------------------------------------------------------------------
# Constructor arguments.

def _get(tree, dotted):
    for key in dotted.split('.'):
        if not isinstance(tree, dict) or key not in tree:
            return None, False
        tree = tree[key]
    return tree, True


def _set(tree, dotted, value):
    *parents, last = dotted.split('.')
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[last] = value


def plain(obj):
    """A JSON-like copy (dicts, lists, str, numbers, bool, None): what training states and options files hold."""
    return json.loads(json.dumps(obj))


def constructor_kwargs(net):
    """{'class_name', **arguments} that rebuild `net` (a persistent network: its recorded constructor call)."""
    cls = type(net)
    if not persistence.is_persistent(net) or not hasattr(net, '_init_kwargs'):
        raise TypeError(f'{cls.__name__} did not record its constructor arguments')
    signature = inspect.signature(cls.__init__)
    bound = dict(signature.bind(None, *net._init_args, **net._init_kwargs).arguments)
    bound.pop(next(iter(signature.parameters)))                 # self
    for name, param in signature.parameters.items():           # **kwargs: its entries, flat
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            bound.update(bound.pop(name, {}))
    return dict(class_name=persistence.class_path(cls), **copy.deepcopy(bound))


def merge_kwargs(architecture, options, from_options):
    """`architecture` (the checkpoint's or a state's constructor kwargs) with the `from_options` paths taken from
    `options` (the run's kwargs) where they have them."""
    out = copy.deepcopy(architecture)
    for dotted in from_options:
        value, found = _get(options, dotted)
        if found:
            _set(out, dotted, copy.deepcopy(value))
    return out

#----------------------------------------------------------------------------
# Reading the source.

def _training_state(path):
    """Our training state at `path` (told apart by content or name, as resume does), else None (a network file of
    any format the loader reads, rosinality's .pt included)."""
    return snapshot.load_training_state(path) if snapshot.is_training_state_file(path) else None


def _networks(path):
    try:
        return checkpoint.load_network_pkl(path)
    except Exception as err:   # check_resume_file has read it already; this is for a file changed since.
        raise FinetuneError(f'--resume: {dnnlib.util.one_line(err)}') from None


def _dataset_shape(training_set_kwargs, c_dim):
    """(resolution, channels, label_dim or None) of the run's dataset, labels read only for a conditional net."""
    dataset = dnnlib.util.construct_class_by_name(**dict(training_set_kwargs, use_labels=c_dim > 0))
    try:
        return dataset.resolution, dataset.num_channels, (dataset.label_dim if c_dim > 0 else None)
    finally:
        dataset.close()


def _check_dataset(path, G_kwargs, training_set_kwargs):
    res, channels, labels = _dataset_shape(training_set_kwargs, G_kwargs['c_dim'])
    data = training_set_kwargs['path']
    if (G_kwargs['img_resolution'], G_kwargs['img_channels']) != (res, channels):
        raise FinetuneError(f'--resume: {path} makes {G_kwargs["img_resolution"]}x{G_kwargs["img_resolution"]} images '
                            f'with {G_kwargs["img_channels"]} channels but {data} has {res}x{res} with {channels}; '
                            f'train on data of the checkpoint\'s size (dataset_tool.py --resolution)')
    if G_kwargs['c_dim'] > 0 and labels != G_kwargs['c_dim']:
        raise FinetuneError(f'--resume: {path} is conditional on {G_kwargs["c_dim"]} classes but {data} has '
                            f'{labels or "no"} label dimensions; give --data with labels of its classes '
                            f'(dataset.json)')

#----------------------------------------------------------------------------

def adopt_resume_source(c, row_start_name=None, spread_kimg=None):
    """Rewrite `c` (training_loop kwargs, in place) for `c.resume_pkl` as the module docstring says; returns `c`.

    row_start_name, spread_kimg: how the rows of a fine-tuning start (training.row_start; None = DEFAULT_*).
    Raises FinetuneError / ResumeError (one line) for a source that cannot start this run.
    """
    path = c.get('resume_pkl')
    if path in (None, 'auto'):
        return c
    path = os.fspath(path)
    check_resume_file(path)
    state = _training_state(path)
    if state is None:
        paired = snapshot.state_for_snapshot(path)
        data = _networks(path)
        G = data.get('G') if data.get('G') is not None else data.get('G_ema')
        if G is None:
            raise FinetuneError(f'--resume: {path} holds no generator (G or G_ema); pass a StyleGAN2 network pickle')
        run_rows, pkl_rows = c.G_kwargs.get('latent_rows'), getattr(G, 'latent_rows', None)
        if pkl_rows is not None and pkl_rows != run_rows:
            raise FinetuneError(f'--resume: {path} is already overparameterized with {pkl_rows} latent rows, not '
                                f'{run_rows or "a latent vector"}; continue it with --rows {pkl_rows}')
        if pkl_rows is None and run_rows is not None:
            return _fine_tuning_start(c, path, data, row_start_name, spread_kimg)
        _adopt_architecture(c, path, data)
        state = snapshot.load_training_state(paired) if paired is not None else None
    if state is not None and state.get('finetune'):
        _adopt_recorded(c, path, state['finetune'])
    return c


def adopt_newest_readable_state(c, paths):
    """`--resume=auto`: adopt what the first readable training state of `paths` (newest first) recorded, as the loop
    will resume from it (it reports the unreadable ones)."""
    for path in paths:
        try:
            state = snapshot.load_training_state(path)
        except snapshot.StateError:
            continue
        if state.get('finetune'):
            _adopt_recorded(c, path, state['finetune'])
        return c
    return c


def _architecture(c, path, data):
    """(G_kwargs, D_kwargs, D from the checkpoint?, the checkpoint G's own kwargs): the checkpoint's architecture
    with the run's option keys (a fresh D of the preset when the file has none)."""
    G = data.get('G') if data.get('G') is not None else data.get('G_ema')
    nets = dict(G=G, D=data.get('D'))
    for key, cls in NETWORK_CLASSES.items():
        if nets[key] is not None and not isinstance(nets[key], cls):
            raise FinetuneError(f'--resume: {path} holds a {type(nets[key]).__name__} as {key}, not a StyleGAN2 '
                                f'{cls.__name__}; pass a StyleGAN2 network pickle')
    kinds = {key: constructor_kwargs(net) for key, net in nets.items() if net is not None}
    _check_dataset(path, kinds['G'], c.training_set_kwargs)
    G_kwargs = merge_kwargs(kinds['G'], c.G_kwargs, G_FROM_OPTIONS)
    if 'D' in kinds:
        D_kwargs = merge_kwargs(kinds['D'], c.D_kwargs, D_FROM_OPTIONS)
    else:   # A fresh D of the preset, as wide as the generator where it says how wide.
        D_kwargs = copy.deepcopy(c.D_kwargs)
        for key in ('channel_base', 'channel_max'):
            value, found = _get(G_kwargs, f'synthesis_kwargs.{key}')
            if found:
                D_kwargs[key] = value
    for kwargs in (G_kwargs, D_kwargs):
        for key in DATASET_SHAPE:
            kwargs.pop(key, None)
    return G_kwargs, D_kwargs, 'D' in kinds, kinds['G']


def _adopt_architecture(c, path, data):
    G_kwargs, D_kwargs, _, G_source = _architecture(c, path, data)
    c.G_kwargs, c.D_kwargs = G_kwargs, D_kwargs
    c.training_set_kwargs = dict(c.training_set_kwargs, use_labels=G_source['c_dim'] > 0)


def _fine_tuning_start(c, path, data, row_start_name, spread_kimg):
    G_kwargs, D_kwargs, has_D, G_source = _architecture(c, path, data)
    G = data.get('G') if data.get('G') is not None else data.get('G_ema')
    needed, rows = max(G.synthesis.max_channels, G.img_channels), G_kwargs['latent_rows']
    if rows != 1 and rows < needed:
        raise FinetuneError(f'--rows={rows} is too small for {path}: its widest layer has {needed} channels, one row '
                            f'each; use --rows {needed} or more')
    name = row_start_name or DEFAULT_ROW_START
    spread = row_start.schedule_kwargs(name, DEFAULT_SPREAD_KIMG if spread_kimg is None else spread_kimg,
                                       c.get('resume_kimg', 0))
    has = {key: data.get(key) is not None for key in ('G', 'G_ema', 'D', 'augment_pipe')}
    record = dict(
        source=os.path.abspath(path), sha256=files.file_sha256(path), latent_rows=G_kwargs['latent_rows'],
        start_kimg=spread['row_spread_start_kimg'], row_start=name, row_spread_kimg=spread['row_spread_kimg'],
        G_kwargs=G_kwargs, D_kwargs=D_kwargs, conditional=G_source['c_dim'] > 0,
        from_checkpoint=dict(
            G=sorted(set(_leaves(G_source)) - set(G_FROM_OPTIONS) - {'class_name'}),
            D=sorted(set(_leaves(constructor_kwargs(data['D']))) - set(D_FROM_OPTIONS) - {'class_name'})
            if has_D else []),
        from_options=dict(G=list(G_FROM_OPTIONS), D=list(D_FROM_OPTIONS) if has_D else ['all (fresh D)'],
                          training='every other option: optimizer, loss, batch, EMA, augmentation, schedule'),
        weights=dict(
            G='checkpoint G' if has['G'] else 'checkpoint G_ema (the file has no G)',
            G_ema='checkpoint G_ema' if has['G_ema'] else 'checkpoint G (the file has no G_ema)',
            w_avg='checkpoint (G.mapping.w_avg, G_ema.mapping.w_avg)',
            D='checkpoint D' if has_D else 'fresh: the file has no D (the preset\'s discriminator, random_seed init)',
            augment_pipe='checkpoint augment p' if has['augment_pipe'] else 'fresh (p = augment_p)'),
    )
    c.G_kwargs, c.D_kwargs = G_kwargs, D_kwargs
    c.training_set_kwargs = dict(c.training_set_kwargs, use_labels=record['conditional'])
    c.loss_kwargs = dict(c.loss_kwargs, **spread)
    c.finetune = plain(record)
    return c


def _adopt_recorded(c, path, record):
    """A fine-tuning run resumed from its training state: the recorded architecture (with the run's option keys)
    and row start."""
    if c.G_kwargs.get('latent_rows') != record['latent_rows']:
        raise FinetuneError(f'--resume: {path} is a state of a run with {record["latent_rows"]} latent rows, not '
                            f'{c.G_kwargs.get("latent_rows") or "a latent vector"}; resume it with '
                            f'--rows {record["latent_rows"]}')
    c.G_kwargs = merge_kwargs(record['G_kwargs'], c.G_kwargs, G_FROM_OPTIONS[1:])    # rows: the recorded ones
    c.D_kwargs = merge_kwargs(record['D_kwargs'], c.D_kwargs, D_FROM_OPTIONS)
    c.training_set_kwargs = dict(c.training_set_kwargs, use_labels=record['conditional'])
    c.loss_kwargs = dict(c.loss_kwargs, row_spread_kimg=record['row_spread_kimg'],
                         row_spread_start_kimg=record['start_kimg'])
    c.finetune = plain(record)


def _leaves(tree, prefix=''):
    for key, value in tree.items():
        path = f'{prefix}{key}'
        if isinstance(value, dict) and value:
            yield from _leaves(value, path + '.')
        else:
            yield path

#----------------------------------------------------------------------------

def describe(record):
    """Log lines: what a fine-tuning run took from the checkpoint and what from its options."""
    G = record['G_kwargs']
    syn, mapping = G.get('synthesis_kwargs', {}), G.get('mapping_kwargs', {})
    lines = [f'Fine-tuning a pretrained StyleGAN2 into {record["latent_rows"]} latent rows: {record["source"]} '
             f'(sha256 {record["sha256"][:16]})',
             f'  From the checkpoint: the architecture (z_dim {G.get("z_dim")}, w_dim {G.get("w_dim")}, mapping '
             f'{mapping.get("num_layers", 8)} layers, channel_base {syn.get("channel_base")}, channel_max '
             f'{syn.get("channel_max")}, noise inputs {"on" if syn.get("use_noise", True) else "off"}, '
             f'{"conditional" if record["conditional"] else "unconditional"}) and the weights of G '
             f'({record["weights"]["G"]}), G_ema ({record["weights"]["G_ema"]}), w_avg, D ({record["weights"]["D"]}), '
             f'augment pipe ({record["weights"]["augment_pipe"]})',
             f'  From the options: {", ".join(record["from_options"]["G"])} (G); '
             f'{", ".join(record["from_options"]["D"])} (D); {record["from_options"]["training"]}',
             f'  Row start ({record["row_start"]}): '
             + row_start.describe(record['row_spread_kimg'], record['start_kimg'])]
    return lines

#----------------------------------------------------------------------------
