"""Compiled step functions: `torch.compile` (TorchDynamo + Inductor) behind one switch, eager as reference and fallback.

A step site (the inversion step, a first-order training phase) hands its eager forward function to a `Compiler`
(`compiler.function(key, make)`), and calls what it gets back like the eager function. The eager code stays the
reference: the parity tests compare both, and every failure of the compiled path ends on it.

The switch, `--compile {auto,on,off}` (`MODES`):
  off   the eager functions, exactly today's path (nothing is traced, no process-wide setting is touched).
  on    every function compiled, one graph per input signature (`fullgraph=True`: a function that cannot be traced
        whole is not compiled in pieces; `dynamic=False`: shapes are static, a new shape is a new graph).
  auto  the step site asks `compiler.repays(...)` whether the steps still to run with one signature pay back the
        compilation (`repays`: a measured eager step time against the site's measured speed-up and compile time).

Failure (`CompileFallbackWarning`): the first time a compiled call raises, the same call runs eagerly; if that
succeeds, the error was the compiler's (no C++ compiler, an op TorchDynamo cannot trace, an Inductor bug): the
Compiler warns once, names the reason in one line, and runs eagerly from then on, every function it made. An
error the eager call raises too is the caller's and propagates unchanged.

On-disk cache: Inductor's FX-graph and AOTAutograd caches (on by default in torch 2.x) live in `cache_dir()`:
`$TORCHINDUCTOR_CACHE_DIR` when set, else `<dnnlib cache>/inductor/<cpu capability>`
(`~/.cache/dnnlib/inductor/avx512`, or under `$DNNLIB_CACHE_DIR`). A second run with the same networks and
shapes skips code generation and the C++ or Triton builds, and pays only TorchDynamo's tracing (see
docs/benchmarks.md for both times).

Accounting: every graph Inductor compiles for a function goes through this module's backend, so
`CompiledFunction.graphs` is the number of graphs made (one per signature; more means recompilation, e.g. per
layer) and `compile_seconds` the wall time of the calls that compiled. `TorchDynamo`'s own recompile limit is
raised for these calls (`RECOMPILE_LIMIT`) so that long test sessions and many networks in one process do not
silently fall back to eager; a function that runs without compiling when it should counts as a failure.

CUDA: `cudagraphs=True` adds CUDA graphs (Inductor's `reduce-overhead` mode, CUDA graph trees) for CUDA inputs:
every call starts a new graph step (`torch.compiler.cudagraph_mark_step_begin`) and returns clones of the outputs,
which the next replay would otherwise overwrite. Off CUDA the flag is ignored.
"""

import contextlib
import os
import time
import warnings

import torch

MODES = ('auto', 'on', 'off')
RECOMPILE_LIMIT = 64          # graphs per code object before TorchDynamo gives up (its default, 8, is per process)


CLI_HELP = ('torch.compile the steps: auto = where a measured speed-up repays the compile time for this run, '
            'on = always, off = eager')


class CompileFallbackWarning(RuntimeWarning):
    """torch.compile failed; the eager path runs instead (one per Compiler)."""


def check_mode(mode):
    """'auto' | 'on' | 'off' (also True/False/None) -> the mode string; ValueError (one line) otherwise."""
    if mode is None or mode is False:
        return 'off'
    if mode is True:
        return 'on'
    mode = str(mode).lower()
    if mode not in MODES:
        raise ValueError(f'--compile {mode}: use one of {", ".join(MODES)}')
    return mode


def cache_dir():
    """Inductor's on-disk cache folder: $TORCHINDUCTOR_CACHE_DIR, else `<dnnlib cache>/inductor/<cpu capability>`.

    Inductor writes its own default (a folder in /tmp, lost at reboot) into the variable the first time anything
    asks it, sometimes on import of other libraries: that value counts as not set. The CPU capability (ATen's
    `avx512`, `avx2`, `default`, set by $ATEN_CPU_CAPABILITY) names a folder of its own because Inductor's
    graph cache does not tell them apart: C++ kernels built for AVX-512 reused under ATEN_CPU_CAPABILITY=avx2
    crashed the process (torch 2.14), under `default` they failed to build."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    import dnnlib
    given = os.environ.get('TORCHINDUCTOR_CACHE_DIR')
    if given and os.path.abspath(given) != os.path.abspath(default_cache_dir()):
        return os.path.abspath(given)
    return dnnlib.util.make_cache_dir_path('inductor', torch.backends.cpu.get_cpu_capability().lower())


def use_cache_dir():
    """Point Inductor at `cache_dir()` (before its first compilation reads the variable); returns the folder."""
    path = cache_dir()
    os.environ['TORCHINDUCTOR_CACHE_DIR'] = path
    return path


def repays(steps, eager_step_s, ratio, compile_s, margin=1.5):
    """True when `steps` steps of `eager_step_s` seconds, run at `ratio` times that time once compiled, save more
    than `margin` times the compile time `compile_s`. The break-even is `compile_s / (eager_step_s * (1 - ratio))`
    steps; a ratio >= 1 never repays."""
    if ratio is None or compile_s is None or ratio >= 1:
        return False
    return steps * eager_step_s * (1 - ratio) > margin * compile_s


def fuse_adam_(optimizer, fused=True):
    """Switch a `torch.optim.Adam`/`AdamW` to its fused kernel (one kernel per step for all tensors, CPU and CUDA;
    the same update up to float rounding) from its next step on, or back (`fused=False`: the default for-loop
    kernel, bitwise today's update). Other optimizers and devices are left as they are. Returns True when the
    optimizer now runs as asked."""
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return False
    params = [p for g in optimizer.param_groups for p in g['params']]
    if any(p.device.type not in ('cpu', 'cuda') or p.dtype not in (torch.float32, torch.float16, torch.bfloat16)
           or p.is_sparse for p in params) or any(g.get('differentiable') for g in optimizer.param_groups):
        return not fused
    for group in optimizer.param_groups:
        if bool(group.get('fused')) == fused:
            continue
        group['fused'], group['foreach'] = (True, False) if fused else (None, None)
        for p in group['params']:
            state = optimizer.state.get(p, {})
            if torch.is_tensor(state.get('step')):   # fused: the count on the device; for-loop: a CPU scalar
                state['step'] = state['step'].to(device=p.device if fused else 'cpu', dtype=torch.float32)
    return True


def traceable_script(script_module, example_args):
    """A TorchScript module as an FX `GraphModule` that TorchDynamo can trace (it cannot trace TorchScript), for
    inputs shaped like `example_args` (positional; the shapes are static); frozen like the original. Raises
    RuntimeError (one line) when the conversion fails or its output differs from the TorchScript module's on
    `example_args` by more than float32 rounding."""
    from torch._export import converter
    try:
        module = converter.TS2EPConverter(script_module, tuple(example_args)).convert().module()
        module.requires_grad_(False)
        with torch.no_grad():
            want, got = script_module(*example_args), module(*example_args)
    except Exception as err:   # noqa: BLE001  The converter raises whatever its passes raise.
        raise RuntimeError(f'TorchScript -> FX conversion failed ({_first_line(err)})') from None
    got = got[0] if isinstance(got, (tuple, list)) and len(got) == 1 else got
    scale = want.abs().max().clamp_min(1e-12)
    if got.shape != want.shape or not bool(((got - want).abs().max() / scale) <= 1e-5):
        raise RuntimeError('TorchScript -> FX conversion gives other values than the TorchScript module')
    return module


def _first_line(err):
    text = str(err).strip().splitlines()
    return f'{type(err).__name__}: {text[0] if text else ""}'[:300]

#----------------------------------------------------------------------------

class CompiledFunction:
    """`fn` compiled on first use per input signature; call it as `fn` (see `Compiler.function`)."""

    def __init__(self, compiler, fn, name, cudagraphs=False, options=None):
        self.compiler, self.eager, self.name = compiler, fn, name
        self.cudagraphs, self.options = bool(cudagraphs), dict(options or {})
        self.graphs = 0                 # graphs Inductor compiled for this function
        self.compile_seconds = 0.0      # wall time of the calls during which something compiled
        self.calls = 0                  # compiled calls
        self._compiled = {}             # kind -> torch.compile'd callable

    def _backend(self, kind):
        from torch._inductor.compile_fx import compile_fx
        patches = dict(self.options)
        if kind == 'cuda-graphs':
            patches['triton.cudagraphs'] = True
        if kind == 'cpu':
            patches.setdefault('layout_optimization', False)   # NCHW convs (channels-last: 0.87-0.94 -> 0.81 at 64 px)

        def backend(gm, example_inputs):
            self.graphs += 1
            return compile_fx(gm, example_inputs, config_patches=patches)
        return backend

    def _callable(self, kind):
        # One torch.compile wrapper per kind ('cpu', 'cuda', 'cuda-graphs'); TorchDynamo specialises each to the
        # input signature.
        if kind not in self._compiled:
            self._compiled[kind] = torch.compile(self.eager, backend=self._backend(kind), fullgraph=True, dynamic=False)
        return self._compiled[kind]

    def __call__(self, *args, after=None, undo=None):
        """`fn(*args)`, compiled unless the Compiler is off or has fallen back.

        after: optional `after(out)` run right after the forward (e.g. the backward): part of the call, so that a
               compile failure there (Inductor compiles the backward graph on its first use) falls back too.
        undo:  optional `undo()` that clears what a failed compiled attempt left (e.g. `.grad` of the leaves).
        Returns `fn`'s output (and `after`'s effects).
        """
        if not self.compiler.active:
            out = self.eager(*args)
            if after is not None:
                after(out)
            return out
        on_cuda = any(isinstance(a, torch.Tensor) and a.is_cuda for a in _leaves(args))
        cuda_graphs = self.cudagraphs and on_cuda
        kind = 'cuda-graphs' if cuda_graphs else 'cuda' if on_cuda else 'cpu'
        graphs, start = self.graphs, time.perf_counter()
        try:
            with _compile_settings():
                if cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                out = self._callable(kind)(*args)
                if cuda_graphs:
                    out = _clone_tensors(out)
                if after is not None:
                    after(out)
            if self.calls == 0 and self.graphs == 0:
                raise RuntimeError('TorchDynamo ran the function without compiling it (recompile limit reached?)')
        except Exception as err:  # noqa: BLE001  Whatever failed, the eager call below decides whose error it was.
            if undo is not None:
                undo()
            out = self.eager(*args)
            if after is not None:
                after(out)
            self.compiler.fall_back(self.name, err)
            return out
        finally:
            if self.graphs != graphs:
                self.compile_seconds += time.perf_counter() - start
        self.calls += 1
        return out


def _leaves(obj):
    if isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _leaves(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _leaves(item)
    else:
        yield obj


def _clone_tensors(obj):
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone_tensors(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _clone_tensors(v) for k, v in obj.items()}
    return obj


@contextlib.contextmanager
def _compile_settings():
    """Around a compiled call: TorchDynamo's recompile limit raised to RECOMPILE_LIMIT, and AOTAutograd told to
    compile the backward graph with the forward one (it would otherwise compile it at the first backward, where
    a failure could no longer be undone by running the forward eagerly)."""
    import torch._dynamo
    import torch._functorch.config
    config = torch._dynamo.config
    name = 'recompile_limit' if hasattr(config, 'recompile_limit') else 'cache_size_limit'
    with config.patch(**{name: max(getattr(config, name), RECOMPILE_LIMIT)}), \
            torch._functorch.config.patch(force_non_lazy_backward_lowering=True):
        yield

#----------------------------------------------------------------------------

class Compiler:
    """The switch of one run: makes `CompiledFunction`s, holds the fallback state and the totals.

    Args:
        mode:  'auto', 'on' or 'off' (see the module doc).
        log:   optional `log(line)` for the fallback line and the compile decisions (e.g. a run's log.txt).
    """

    def __init__(self, mode='off', log=None):
        self.mode = check_mode(mode)
        self.log = log
        self.failure = None             # one-line reason of the fallback, None while compiling works
        self.functions = {}             # key -> CompiledFunction
        if self.mode != 'off':
            use_cache_dir()

    @property
    def active(self):
        """True while functions run compiled: the mode is not 'off' and nothing has failed."""
        return self.mode != 'off' and self.failure is None

    @property
    def graphs(self):
        return sum(f.graphs for f in self.functions.values())

    @property
    def compile_seconds(self):
        return sum(f.compile_seconds for f in self.functions.values())

    def function(self, key, make, name=None, cudagraphs=False, options=None):
        """The CompiledFunction for `key` (hashable: the objects the function closes over, e.g. the networks):
        made once with `make()` -> the eager function, so that every batch of a run reuses the same graphs."""
        if key not in self.functions:
            self.functions[key] = CompiledFunction(self, make(), name or str(key), cudagraphs=cudagraphs,
                                                   options=options)
        return self.functions[key]

    def fall_back(self, name, err):
        """Switch every function of this Compiler to eager, with one warning (and log line) naming the reason."""
        if self.failure is not None:
            return
        self.failure = f'{name}: {_first_line(err)}'
        line = (f'torch.compile failed ({self.failure}); running eagerly from here on. Use --compile off to skip '
                f'compiling')
        warnings.warn(line, CompileFallbackWarning, stacklevel=3)
        if self.log is not None:
            self.log(line)

    def summary(self):
        """JSON-able record: mode, whether it fell back (and why), graphs made, compile seconds."""
        return dict(mode=self.mode, active=self.active, failure=self.failure, graphs=self.graphs,
                    compile_seconds=round(self.compile_seconds, 3),
                    cache_dir=cache_dir() if self.mode != 'off' else None)
