"""Wall-clock timing shared by the benchmark scripts."""

import time


def time_fn(fn, iters, warmup, sync):
    """Mean milliseconds of `fn()` over `iters` calls after `warmup` calls; `sync()` waits for the device."""
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - start) / iters * 1e3
