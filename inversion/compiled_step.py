"""The inversion step compiled: synthesis + loss (masks included) and its backward as one graph per
(network, loss, latent space, batch shape), for `optimize.Inverter` (invert.py, upsample.py, the encoder start).

`InversionCompiler(mode)` is made once per job and handed to every batch's Inverter, so that all batches of one
shape share one graph. Each step the Inverter asks `step_function(inverter)` for the callable that runs the forward
and backward (`torch_utils.compiled.CompiledFunction`; the eager function when nothing is compiled):

  off    always eager.
  on     compiled for every batch shape.
  auto   the first `AUTO_TIMED_STEPS` + 1 steps of a new batch shape run eagerly and are timed (the first is a
         warm-up); then the shape is compiled if the steps still planned for it (this batch's, plus the other
         batches of that shape the job announced with `plan()`) repay the compilation (`compiled.repays` with
         `ESTIMATES` of the device: the measured compiled / eager step time ratio and compile time). A batch of
         another shape (e.g. the last, partial one) is decided on its own steps: usually eager.

The compiled function closes over the generator, the loss and the space only (targets and masks are arguments),
so every batch of a run reuses its graph; a masked loss (`losses.MaskedLoss`) is unwrapped, its masks being in
the target state. NVIDIA's TorchScript VGG16 (the default LPIPS) is traced through an FX twin made by
`torch_utils.compiled.traceable_script`; where that conversion fails, only the synthesis is compiled and the
LPIPS network runs as TorchScript (one log line). On CUDA the step is captured as a CUDA graph (`cudagraphs=True`;
Inductor's CUDA graph trees, one per batch shape), and the Adam update of a compiled step is one fused kernel
(`compiled.fuse_adam_`).
"""

import time

import torch

from torch_utils import compiled

#----------------------------------------------------------------------------

AUTO_TIMED_STEPS = 2        # eager steps timed (after one warm-up step) before `auto` decides

# Per device type: the compiled / eager time of one inversion step and the compile time (seconds, cold cache),
# measured by benchmarks/bench_inversion_step.py (docs/benchmarks.md): on the CPU 0.81-0.84 at 64 and 256 px, batch
# 1 and 4, one thread, and 100-120 s of compilation; rounded toward eager (0.85, 150 s) with a margin of 1.5 in
# `compiled.repays`, so that `auto` compiles only runs that clearly repay it. CUDA: not measured yet (no GPU was
# lent): `None` keeps `auto` eager there until the acceptance run (benchmarks.gpu_acceptance) has measured it.
ESTIMATES = {
    'cpu': dict(ratio=0.85, compile_s=150.0),
    'cuda': None,
}


def base_loss(loss):
    """The loss module whose forward the step runs: `MaskedLoss` unwrapped (its masks are in the target state)."""
    from .losses import MaskedLoss
    return loss.loss if isinstance(loss, MaskedLoss) else loss


def make_step_forward(G, loss, space):
    """`forward(params, target_state) -> (loss [N], lpips [N], images [N, C, H, W])`: the Inverter's forward as a
    function of the latents and the target alone (what `torch.compile` traces)."""
    def inversion_step(params, target_state):
        images = G.synthesis(space.to_ws(params), noise_mode='const', force_fp32=True)
        out = loss(images, target_state)
        return out['loss'], out['lpips'], images
    return inversion_step


def make_synthesis(G, space):
    """`synthesis(params) -> images [N, C, H, W]`: the generator part of the step alone (compiled when the loss's
    network cannot be traced, e.g. a TorchScript file the FX conversion does not take)."""
    def inversion_synthesis(params):
        return G.synthesis(space.to_ws(params), noise_mode='const', force_fp32=True)
    return inversion_synthesis


class _SplitForward:
    """The step's forward with only the synthesis compiled and the loss eager; called like `make_step_forward`'s
    function (`fn(params, target_state, after=..., undo=...)`), with the CompiledFunction's `compiler`."""

    def __init__(self, synthesis, loss):
        self.synthesis, self.loss, self.compiler = synthesis, loss, synthesis.compiler

    def __call__(self, params, target_state, after=None, undo=None):
        images = self.synthesis(params)
        out = self.loss(images, target_state)
        out = out['loss'], out['lpips'], images
        if after is not None:
            after(out)
        return out


def _signature(inverter):
    """What one graph is specialised to: the latents' shape, dtype and device, and the target state's entries."""
    p = inverter.params
    state = tuple(sorted((k, tuple(v.shape) if torch.is_tensor(v) else None)
                         for k, v in inverter.target_state.items()))
    return (tuple(p.shape), p.dtype, str(p.device), state, inverter.precision)


class _TimedEager:
    """The eager step, timed (seconds of the forward + backward, the part that compiling speeds up)."""

    def __init__(self, fn, device):
        self.fn, self.device, self.seconds = fn, device, []

    def __call__(self, *args, after=None, undo=None):
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        out = self.fn(*args)
        if after is not None:
            after(out)
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        self.seconds.append(time.perf_counter() - start)
        return out


class _CompiledStep:
    """The compiled forward + backward of one Inverter, and its Adam on the fused kernel while (and only while) the
    step runs compiled: after a fallback the update is bitwise the eager one again."""

    def __init__(self, fn, optimizer):
        self.fn, self.optimizer = fn, optimizer

    def __call__(self, *args, after=None, undo=None):
        out = self.fn(*args, after=after, undo=undo)
        compiled.fuse_adam_(self.optimizer, self.fn.compiler.active)
        return out


class InversionCompiler:
    """The `--compile` switch of one inversion job (see the module doc).

    Args:
        mode:      'auto', 'on' or 'off'.
        log:       optional `log(line)` for the decisions and a fallback.
        estimates: {device type: dict(ratio, compile_s) or None}; default `ESTIMATES`.
    """

    def __init__(self, mode='auto', log=None, estimates=None):
        self.compiler = compiled.Compiler(mode, log=log)
        self.mode, self.log = self.compiler.mode, log
        self.estimates = ESTIMATES if estimates is None else estimates
        self.decisions = {}         # signature -> True (compiled) / False (eager)
        self.timers = {}            # signature -> _TimedEager while auto measures
        self.planned = {}           # batch size -> steps announced by the job for batches of that size
        self.prepared = {}          # signature -> whether the loss could be made traceable (`prepare_compile`)

    def set_log(self, log):
        """Where the decisions and a fallback are logged (e.g. the run's log.txt)."""
        self.log = self.compiler.log = log

    def plan(self, batch_sizes, steps):
        """The job's batches ahead (their sizes) and the steps of each: what `auto` may count on."""
        self.planned = {}
        for n in batch_sizes:
            self.planned[int(n)] = self.planned.get(int(n), 0) + int(steps)

    def step_function(self, inverter):
        """The callable of this step: `fn(params, target_state, after=..., undo=...)`, or None for plain eager."""
        if not self.compiler.active:
            return None
        sig = _signature(inverter)
        decision = self.decisions.get(sig)
        if decision is None:
            decision = self._decide(sig, inverter)
            if decision is None:                        # auto, still measuring
                return self.timers[sig]
        if not decision:
            return None
        G, loss, space = inverter.G, base_loss(inverter.loss), inverter.space
        if sig not in self.prepared:
            self.prepared[sig] = self._prepare(loss, inverter)
        if self.prepared[sig]:
            fn = self.compiler.function(('inversion-step', G, loss, space), lambda: make_step_forward(G, loss, space),
                                        name='inversion step', cudagraphs=True)
        else:
            synthesis = self.compiler.function(('inversion-synthesis', G, space), lambda: make_synthesis(G, space),
                                               name='inversion synthesis', cudagraphs=True)
            fn = _SplitForward(synthesis, loss)
        return _CompiledStep(fn, inverter.optimizer)

    def _prepare(self, loss, inverter):
        """Make the loss traceable for this batch shape (`prepare_compile`: NVIDIA's TorchScript VGG16 -> FX);
        False when it cannot be, and then only the synthesis is compiled."""
        prepare = getattr(loss, 'prepare_compile', None)
        if prepare is None:
            return True
        G = inverter.G
        try:
            prepare((inverter.params.shape[0], G.img_channels, G.img_resolution, G.img_resolution), inverter.device)
        except RuntimeError as err:
            if self.log is not None:
                self.log(f'--compile: the LPIPS network stays TorchScript, only the synthesis is compiled ({err})')
            return False
        return True

    def _decide(self, sig, inverter):
        if self.mode == 'on':
            self.decisions[sig] = True
            return True
        timer = self.timers.get(sig)
        if timer is None:
            timer = self.timers[sig] = _TimedEager(make_step_forward(inverter.G, base_loss(inverter.loss),
                                                                     inverter.space), inverter.device)
        if len(timer.seconds) < AUTO_TIMED_STEPS + 1:
            return None
        step_s = min(timer.seconds[1:])
        remaining = inverter.steps - inverter.step
        n = inverter.params.shape[0]
        later = max(self.planned.get(n, 0) - inverter.steps, 0)      # other batches of this size, announced
        est = self.estimates.get(inverter.device.type)
        ok = est is not None and compiled.repays(remaining + later, step_s, est['ratio'], est['compile_s'])
        self.decisions[sig] = ok
        del self.timers[sig]
        if self.log is not None:
            why = ('no measured speed-up on this device yet' if est is None else
                   f'{remaining + later} steps of {step_s * 1e3:.0f} ms at ratio {est["ratio"]} vs about '
                   f'{est["compile_s"]:.0f} s of compilation')
            self.log(f'--compile auto: batch of {n}: {"compiling" if ok else "eager"} ({why})')
        return ok

    def summary(self):
        return dict(self.compiler.summary(), decisions=sum(bool(v) for v in self.decisions.values()))
