"""How the rows of a latent matrix start when a pretrained StyleGAN2 is fine-tuned into R rows.

The paper samples the rows of a latent matrix as `Z_i = (z~_i + z~) / sqrt(2)`: unit variance, correlation 0.5
between rows. A StyleGAN2 generator was trained on one vector per image, i.e. on identical rows; from its first
fine-tuning step the paper's sampling shows it rows that disagree. Two ways to start:

- 'paper':  the paper's sampling from the first step (`a = 1` throughout).
- 'spread': rows start identical and spread to the paper's correlation over the first `kimg` thousand images
            of the fine-tuning: `Z_i = (a z~_i + z~) / sqrt(1 + a^2)` with `a` rising linearly from 0 to 1
            (correlation `1 / (1 + a^2)`: 1 -> 0.5; variance 1 throughout).

`a` depends on the image counter alone (and the run's fixed settings), and `Generator.sample_z` draws the same
numbers whatever `a` is, so a run killed and resumed from a training state stays exact.
"""

ROW_STARTS = ('paper', 'spread')


def row_spread(cur_nimg, spread_kimg=0, start_kimg=0):
    """`a` in [0, 1] at image `cur_nimg` of a run whose rows spread over `spread_kimg` thousand images from its
    fine-tuning start at `start_kimg` (0 = the paper's sampling, `a = 1`, from the start)."""
    if spread_kimg <= 0:
        return 1.0
    done = (cur_nimg - start_kimg * 1000) / (spread_kimg * 1000)
    return float(min(max(done, 0.0), 1.0))


def schedule_kwargs(row_start, spread_kimg, start_kimg):
    """The loss's arguments for a row start: `row_start` in ROW_STARTS; 'paper' ignores `spread_kimg`."""
    if row_start not in ROW_STARTS:
        raise ValueError(f"row start must be one of {', '.join(ROW_STARTS)}, got {row_start!r}")
    if row_start == 'spread' and not spread_kimg > 0:
        raise ValueError(f'--row-spread-kimg must be > 0 for --row-start=spread, got {spread_kimg}')
    return dict(row_spread_kimg=float(spread_kimg) if row_start == 'spread' else 0.0,
                row_spread_start_kimg=float(start_kimg))


def describe(spread_kimg, start_kimg=0):
    """One phrase for logs: how the rows of this run's latents are drawn."""
    if spread_kimg <= 0:
        return "the paper's sampling (z_i = (z~_i + z~) / sqrt(2)) from the first step"
    return (f'identical rows at kimg {start_kimg:g}, spread to the paper\'s correlation by kimg '
            f'{start_kimg + spread_kimg:g} (z_i = (a z~_i + z~) / sqrt(1 + a^2), a: 0 -> 1)')
