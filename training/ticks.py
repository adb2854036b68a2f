"""The tick cadence shared by the GAN loop (`training.training_loop`) and the encoder loop
(`training.encoder_loop`).

A loop object provides `cfg` (`total_kimg`, `kimg_per_tick`, `abort_fn`, `progress_fn`), `progress`
(`cur_nimg`, `cur_tick`, `skipped_steps`, `skipped`), `log(msg)`, `rank`, `world_size`, `device`, and three
methods: `step()` (one minibatch, advancing `progress.cur_nimg`; non-finite events go through
`count_skip`), `_tick(done) -> abort` (reports, snapshots; it calls
`tick_abort` and `finish_tick` below) and `_summary(seconds, aborted) -> dict`. Ticks end every
`kimg_per_tick` thousand images, after the first step (tick 0 is one minibatch long, so the first report
comes at once) and at the end. `loop.timing` holds the wall-clock marks the tick reports use.
"""

import time

from training import run_setup

#----------------------------------------------------------------------------

def run_ticks(loop, total_nimg, on_step=None):
    """Step `loop` until `total_nimg` images (or an abort at a tick); returns `loop._summary(...)`.

    on_step: None or fn(images) called after every step with the number of images it used.
    """
    c, p = loop.cfg, loop.progress
    now = time.time()
    loop.timing = dict(start=now, tick_start=now, tick_start_nimg=p.cur_nimg, maintenance=0.0)
    loop.log(f'Training for {c.total_kimg} kimg from kimg {p.cur_nimg / 1000:.3f}...')
    while True:
        before = p.cur_nimg
        loop.step()
        if on_step is not None:
            on_step(p.cur_nimg - before)
        done = p.cur_nimg >= total_nimg
        tick_end_nimg = loop.timing['tick_start_nimg'] + c.kimg_per_tick * 1000
        if not done and p.cur_tick != 0 and p.cur_nimg < tick_end_nimg:
            continue
        done = loop._tick(done) or done
        if c.progress_fn is not None:
            c.progress_fn(p.cur_nimg, total_nimg)
        if done:
            break
    loop.log('Exiting...')
    return loop._summary(time.time() - loop.timing['start'], aborted=p.cur_nimg < total_nimg)


def tick_abort(loop):
    """Whether to stop after this tick: `cfg.abort_fn()` on rank 0, the same answer on every rank."""
    abort = loop.cfg.abort_fn is not None and bool(loop.cfg.abort_fn())
    if loop.world_size > 1:   # Rank 0 decides, so that every rank leaves the loop together.
        abort = run_setup.broadcast_flag(abort, loop.device)
    if abort:
        loop.log('Aborting...')
    return abort


def count_skip(loop, what, detail):
    """Count one non-finite event (`progress.skipped_steps`, `progress.skipped[what]`) and log it: a gradient
    (the step is skipped) or a running statistic's update (that update is)."""
    p = loop.progress
    p.skipped_steps += 1
    p.skipped[what] = p.skipped.get(what, 0) + 1
    loop.log(f'Warning: non-finite {detail} at kimg {p.cur_nimg / 1000:.3f}: skipped ({p.skipped_steps} so far)')


def finish_tick(loop):
    """Start the next tick: count it and mark its start (the time since `tick_end` was maintenance)."""
    p = loop.progress
    p.cur_tick += 1
    loop.timing.update(tick_start_nimg=p.cur_nimg, tick_start=time.time())
    loop.timing['maintenance'] = loop.timing['tick_start'] - loop.timing['tick_end']
