"""First-use self-check of the CUDA kernels against their reference paths.

The first time a process is about to run a CUDA op (bias_act, upfirdn2d, the fused modulated
convolution) for a given `(op, dtype, configuration)`, the op hands `trusted()` a small random
`Case` drawn from that configuration. Both paths run it: forward, the gradient for a random
cotangent, and the gradient of a squared-gradient penalty (the second order that R1 and
path-length regularisation take). The largest error, relative to the largest magnitude of the
reference (computed in float64), is compared with the tolerance of the parity tests for the
dtype. The verdict holds for the rest of the process:

- pass: the kernel is used; one line goes to the run log;
- mismatch (or an exception in the kernel): one `KernelSelfCheckWarning` naming the op, the
  configuration and the error, the same line in the run log, and the reference path for
  that configuration from then on.

Run logs: `log_to(path)` (called by the training and inversion loggers) appends every verdict,
past and future, to that file. `results()` lists them.

Turned off (the kernels are trusted unchecked, e.g. for benchmarking) by the environment
variable `OVERPARAM_OPS_SELF_CHECK=0` or `set_enabled(False)`.
"""

import contextlib
import dataclasses
import os
import threading
import time
import warnings
from typing import Callable, List, Optional

import torch

ENV_VAR = 'OVERPARAM_OPS_SELF_CHECK'

# Tolerance per dtype of the kernel's inputs, relative to the largest magnitude of the float64
# reference: the parity tests' values (test_ops.py / test_modulated_conv2d_cuda.py).
TOLERANCES = {torch.float64: 1e-6, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


class KernelSelfCheckWarning(RuntimeWarning):
    """A CUDA kernel disagreed with its reference path; the reference path is used instead."""


@dataclasses.dataclass
class Case:
    """One self-check: `kernel(*inputs)` and `reference(*inputs)` should agree.

    `inputs` are tensors on the kernel's device (floating ones get gradients); the reference
    is called with float64 copies. `tolerance` None = `TOLERANCES[dtype of inputs[0]]`.
    `second_order` False skips the gradient of the penalty.
    """
    inputs: List[torch.Tensor]
    kernel: Callable
    reference: Callable
    tolerance: Optional[float] = None
    second_order: bool = True


@dataclasses.dataclass
class Verdict:
    op: str
    dtype: str
    config: str
    ok: bool
    error: float           # largest relative error (inf when the kernel raised)
    tolerance: float
    detail: str            # which output, or the exception
    seconds: float

    def line(self):
        what = f'{self.op} [{self.dtype}, {self.config}]'
        if self.ok:
            return (f'ops self-check: {what}: CUDA kernel matches the reference '
                    f'(max rel. error {self.error:.2e} <= {self.tolerance:.0e}, {self.seconds * 1e3:.0f} ms)')
        return (f'OPS SELF-CHECK FAILED: {what}: the CUDA kernel disagrees with the reference path '
                f'({self.detail}: max rel. error {self.error:.2e} > tolerance {self.tolerance:.0e}). '
                f'Using the reference implementation for this configuration for the rest of the process; '
                f'please report this GPU/driver/configuration.')


_enabled: Optional[bool] = None       # None = from the environment variable
_verdicts = {}                        # (op, dtype, config) -> Verdict
_log_path: Optional[str] = None
_lock = threading.Lock()

#----------------------------------------------------------------------------

def is_enabled() -> bool:
    if _enabled is not None:
        return _enabled
    return os.environ.get(ENV_VAR, '1').strip().lower() not in ('0', 'false', 'no', 'off')

def set_enabled(enabled: Optional[bool]) -> None:
    """True/False overrides the environment variable; None goes back to it."""
    global _enabled
    _enabled = enabled

def reset() -> None:
    """Forget every verdict (tests)."""
    with _lock:
        _verdicts.clear()

def results() -> List[Verdict]:
    with _lock:
        return list(_verdicts.values())

def log_to(path) -> None:
    """Append verdicts to `path` (a run's log.txt) from now on, starting with those already reached."""
    global _log_path
    _log_path = None if path is None else os.fspath(path)
    for verdict in results():
        _append_to_log(verdict.line())

def _append_to_log(line: str) -> None:
    path = _log_path
    if path is None:
        return
    try:
        with open(path, 'a') as f:
            f.write(f'{time.strftime("%Y-%m-%d %H:%M:%S")} {line}\n')
    except OSError:
        pass   # the log is best effort; the warning has been issued

#----------------------------------------------------------------------------

def describe(config: dict) -> str:
    return ', '.join(f'{key}={value}' for key, value in config.items())

def trusted(op: str, dtype: torch.dtype, config: dict, make_case: Callable[[], Case]) -> bool:
    """Whether to run the CUDA kernel of `op` for this configuration (checks it the first time).

    `config` names the configuration class (kernel branches: activation, factors, filter size,
    memory format, ...); `make_case()` builds the small random `Case` for it.
    """
    if not is_enabled() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    key = (op, str(dtype).replace('torch.', ''), describe(config))
    verdict = _verdicts.get(key)
    if verdict is None:
        verdict = _run_check(key, make_case)
        with _lock:
            _verdicts[key] = verdict
        _append_to_log(verdict.line())
        if not verdict.ok:
            warnings.warn(verdict.line(), KernelSelfCheckWarning, stacklevel=3)
    return verdict.ok

#----------------------------------------------------------------------------

def _outputs(fn, inputs, second_order, seed, cotangent_dtype):
    """Forward, gradients for a fixed random cotangent, and the gradient of a gradient penalty.

    The first-order gradients are taken without `create_graph` (ops may run other kernels when a
    graph of the backward is requested, as the fused modulated conv does), the penalty's in a
    second pass with it. The cotangent is drawn in float32 and rounded to `cotangent_dtype` (the
    kernel's), so that both paths get the same values.
    """
    def leaves_and_output():
        xs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
        leaves = [t for t in xs if t.requires_grad]
        return leaves, fn(*xs)

    leaves, y = leaves_and_output()
    gen = torch.Generator(device=y.device).manual_seed(seed)
    cotangent = torch.randn(y.shape, generator=gen, device=y.device, dtype=torch.float32)
    cotangent = cotangent.to(cotangent_dtype).to(y.dtype)
    grads = torch.autograd.grad(y, leaves, cotangent, allow_unused=True)
    named = [('forward', y.detach())] + [(f'gradient {i}', g) for i, g in enumerate(grads)]
    if second_order:
        leaves, y = leaves_and_output()
        grads = torch.autograd.grad(y, leaves, cotangent, create_graph=True, allow_unused=True)
        wide = lambda g: g.double() if g.dtype == torch.float64 else g.float()
        penalty = sum(wide(g).square().sum() * (i + 1) for i, g in enumerate(grads) if g is not None)
        if isinstance(penalty, torch.Tensor) and penalty.requires_grad:
            second = torch.autograd.grad(penalty, leaves, allow_unused=True)
            named += [(f'second-order gradient {i}', g) for i, g in enumerate(second)]
    return named

def _errors(got, want):
    """[(name, |got - want|_max / max(|want|_max, 1))] over the named outputs of both paths."""
    errors = []
    for (name, u), (_, v) in zip(got, want):
        if u is None and v is None:
            continue
        u = torch.zeros_like(v) if u is None else u
        v = torch.zeros_like(u) if v is None else v
        if u.shape != v.shape:
            errors.append((f'{name} has shape {list(u.shape)} instead of {list(v.shape)}', float('inf')))
            continue
        if v.numel() == 0:
            continue
        u, v = u.detach().double(), v.detach().double()
        err = (u - v).abs().max().item() / max(v.abs().max().item(), 1.0)
        errors.append((name, err if err == err else float('inf')))   # NaN counts as infinitely wrong
    return errors

def _run_check(key, make_case) -> Verdict:
    op, dtype, config = key
    start = time.perf_counter()
    tolerance = float('nan')
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.enable_grad())
            for device_type in ['cpu'] + (['cuda'] if torch.cuda.is_available() else []):
                stack.enter_context(torch.autocast(device_type, enabled=False))
            case = make_case()
            kernel_dtype = case.inputs[0].dtype
            tolerance = case.tolerance if case.tolerance is not None else TOLERANCES.get(kernel_dtype, 1e-2)
            got = _outputs(case.kernel, case.inputs, case.second_order, 1, kernel_dtype)
            as_double = [t.detach().double() if t.is_floating_point() else t for t in case.inputs]
            want = _outputs(case.reference, as_double, case.second_order, 1, kernel_dtype)
        errors = _errors(got, want)
        error = max([e for _, e in errors], default=0.0)
        ok = error <= tolerance
        failing = [name for name, e in errors if not e <= tolerance]
        detail = f'first wrong: {failing[0]}' if failing else ''
        if len(failing) > 1:
            detail += f' (and {len(failing) - 1} more)'
    except Exception as exc:   # a kernel that raises is as untrustworthy as a wrong one
        error, detail, ok = float('inf'), f'{type(exc).__name__}: {exc}', False
    try:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    except RuntimeError:
        pass
    return Verdict(op=op, dtype=dtype, config=config, ok=ok, error=error, tolerance=tolerance, detail=detail,
                   seconds=time.perf_counter() - start)

#----------------------------------------------------------------------------
