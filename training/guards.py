"""Keeping running statistics finite: one NaN latent would otherwise make w_avg NaN for the rest of the run (and
every truncated image of G_ema with it, snapshots included)."""

import re

import torch

#----------------------------------------------------------------------------

class RunningStatGuard:
    """Remembers buffers of `module` whose names match `pattern` (G's w_avg) before a step and puts back the
    remembered value of any that the step made non-finite."""

    def __init__(self, module, pattern=r'(.*\.)?w_avg'):
        matcher = re.compile(pattern)
        self.buffers = [(name, b) for name, b in module.named_buffers() if matcher.fullmatch(name)]
        self.saved = [b.detach().clone() for _, b in self.buffers]

    @torch.no_grad()
    def remember(self):
        for kept, (_, current) in zip(self.saved, self.buffers):
            kept.copy_(current)

    @torch.no_grad()
    def restore_if_nonfinite(self):
        """Names of the buffers restored (one host synchronisation for all of them)."""
        if not self.buffers:
            return []
        finite = torch.stack([torch.isfinite(b).all() for _, b in self.buffers]).tolist()
        restored = []
        for ok, kept, (name, current) in zip(finite, self.saved, self.buffers):
            if not ok:
                current.copy_(kept)
                restored.append(name)
        return restored

#----------------------------------------------------------------------------
