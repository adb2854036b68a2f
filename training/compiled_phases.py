"""The first-order training phases compiled: G and D inside Gmain and Dmain (and the encoder's step) run through
`torch.compile` graphs; Greg and Dreg stay eager (their gradients of gradients are beyond AOTAutograd).

`PhaseCompiler(mode)` is made once per run and attached to the loss (`StyleGAN2Loss.compiled`); the loss calls
`run_G` / `run_D` for its first-order terms only (the adversarial terms of Gmain and Dmain, also inside Gboth and
Dboth), and its own eager code everywhere else (path length, R1). Graphs, each specialised to its batch shape:

  G, with gradients (Gmain)       mapping (moves w_avg) + style mixing + synthesis
  G, without gradients (Dmain)    the same, under no_grad
  D, frozen (Gmain)               the gradient flows to the images only
  D, trainable (Dmain)            fakes and reals share it

The augmentation pipe between G and D stays eager (its geometry reads values on the host). Random draws inside the
graphs (style mixing, G's noise) are made by the same ATen calls on the same generator as eagerly (Inductor's
`fallback_random`), so a compiled iteration draws what an eager one draws and a resumed compiled run continues the
uninterrupted one exactly.

Modes: 'off' eager; 'on' compiled; 'auto' compiled when the device has a measured speed-up (`ESTIMATES`) and the run
plans at least `AUTO_MIN_STEPS` steps. The decision depends on the run's configuration only, never on timings, so
that a resumed run decides as the uninterrupted one did (exact resume).
"""

from torch_utils import compiled

#----------------------------------------------------------------------------

AUTO_MIN_STEPS = 2000       # planned training steps below which `auto` stays eager

# Per device type: compiled / eager time of Gmain + Dmain measured by `benchmarks/bench_training_step.py --compile`
# (docs/benchmarks.md). `auto` compiles only where it is below 1; None = not measured (CUDA: no GPU was lent yet).
ESTIMATES = {
    'cpu': None,
    'cuda': None,
}


class PhaseCompiler:
    """The `--compile` switch of a training run (see the module doc)."""

    def __init__(self, mode='auto', log=None, estimates=None):
        self.compiler = compiled.Compiler(mode, log=log)
        self.mode, self.log = self.compiler.mode, log
        self.estimates = ESTIMATES if estimates is None else estimates
        self.prepared = set()       # encoder batch shapes whose loss network was made traceable

    def wanted(self, device, planned_steps):
        """Whether this run compiles: 'on' always, 'off' never, 'auto' by device and length (see the module doc)."""
        if self.mode != 'auto':
            return self.mode == 'on'
        ratio = self.estimates.get(getattr(device, 'type', str(device)))
        return ratio is not None and ratio < 1 and planned_steps >= AUTO_MIN_STEPS

    def attach(self, loss, device, planned_steps):
        """Hand this compiler to `loss` (anything with a `compiled` attribute) when the run compiles; returns
        whether it does. The log gets one line either way."""
        use = self.wanted(device, planned_steps) and hasattr(loss, 'compiled')
        loss.compiled = self if use else None
        if self.log is not None and self.mode != 'off':
            self.log(f'--compile {self.mode}: first-order phases {"compiled" if use else "eager"}'
                     f'{"" if use or self.mode == "on" else " (no measured speed-up on this device, or a short run)"}')
        return use

    def run_G(self, loss, z, c):
        """`loss.generate(z, c)` compiled -> (img, None): the first-order terms read the images only."""
        fn = self.compiler.function(('G', loss), lambda: _images_of(loss), name='G (first-order phases)',
                                    options=dict(fallback_random=True))
        return fn(z, c), None

    def run_D(self, loss, img, c):
        """`loss.D(img, c)` compiled -> logits `[N, 1]`."""
        fn = self.compiler.function(('D', loss), lambda: _logits_of(loss), name='D (first-order phases)',
                                    options=dict(fallback_random=True))
        return fn(img, c)

    def run_terms(self, loss, E, images, latents):
        """`loss.terms(E, images, latents)` of the encoder's loss (`training.encoder_loss`) compiled."""
        fn = self.compiler.function(('E', loss, E), lambda: _terms_of(loss, E), name='encoder step')
        key = (tuple(images.shape), latents is None)
        if key not in self.prepared:                    # NVIDIA's TorchScript VGG16 -> an FX twin for the shape
            self.prepared.add(key)
            prepare = getattr(loss.recon_loss, 'prepare_compile', None)
            if prepare is not None:
                try:
                    prepare(tuple(images.shape), images.device)
                except RuntimeError as err:
                    if self.log is not None:
                        self.log(f'--compile: the loss network stays TorchScript ({err})')
        return fn(images, latents)

    def summary(self):
        return self.compiler.summary()


def _images_of(loss):
    def generator_images(z, c):
        return loss.generate(z, c)[0]
    return generator_images


def _logits_of(loss):
    def discriminator_logits(img, c):
        return loss.D(img, c)
    return discriminator_logits


def _terms_of(loss, E):
    def encoder_terms(images, latents):
        return loss.terms(E, images, latents)
    return encoder_terms
