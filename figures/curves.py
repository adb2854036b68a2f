"""Curves (matplotlib, Agg backend, no global pyplot state): LPIPS against the optimisation step, quantile bands,
explained variance. Every function writes one PNG atomically; matplotlib is imported on the first call.
"""

import numpy as np

from torch_utils.files import atomic_write

#----------------------------------------------------------------------------

def new_figure(size=(8, 5), dpi=100):
    """A matplotlib Figure drawn by the Agg canvas (no display, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path):
    """Write `fig` as a PNG to `path` (temporary file, then rename)."""
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png'), suffix='.png')


def pad_curves(rows):
    """Curves of different lengths -> `[N, T]` float64, NaN after each curve's end."""
    length = max(len(r) for r in rows)
    out = np.full([len(rows), length], np.nan)
    for i, r in enumerate(rows):
        out[i, :len(r)] = np.asarray(r, dtype=np.float64)
    return out


def curve_quantiles(curves, lo=0.25, hi=0.75):
    """curves `[N, T]` (NaN = missing) -> (median `[T]`, lower quantile `[T]`, upper quantile `[T]`)."""
    import warnings
    arr = np.asarray(curves, dtype=np.float64)
    with np.errstate(all='ignore'), warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)                     # all-NaN columns stay NaN
        return np.nanmedian(arr, axis=0), np.nanquantile(arr, lo, axis=0), np.nanquantile(arr, hi, axis=0)

#----------------------------------------------------------------------------

def lpips_curves_figure(curves, truncation_end=None, title='LPIPS during inversion', ylabel='LPIPS'):
    """The Figure of `lpips_curves` (None for no curves)."""
    if not curves:
        return None
    arr = pad_curves(list(curves.values()))
    with np.errstate(all='ignore'):
        mean = np.nanmean(arr, axis=0)
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    steps = np.arange(arr.shape[1])
    for row in arr:
        ax.plot(steps, row, color='tab:blue', alpha=0.25, linewidth=0.6)
    ax.plot(steps, mean, color='tab:red', linewidth=2.5, label=f'mean of {arr.shape[0]}')
    if truncation_end:
        ax.axvline(truncation_end, color='gray', linestyle=':', label=f'truncation off from step {truncation_end}')
        ax.annotate(f'truncation off (step {truncation_end})', (truncation_end, 1), xycoords=('data', 'axes fraction'),
                    xytext=(4, -14), textcoords='offset points', color='dimgray')
    ax.set(xlabel='step', ylabel=ylabel, title=title)
    ax.set_ylim(bottom=0)
    ax.legend()
    return fig


def lpips_curves(path, curves, truncation_end=None, title='LPIPS during inversion', ylabel='LPIPS'):
    """Every image's curve (thin) and their mean (thick). curves: {name: `[T]`} (NaN = missing); truncation_end:
    the step where truncation stops (dotted line, labelled). Nothing is written for no curves."""
    fig = lpips_curves_figure(curves, truncation_end, title, ylabel)
    if fig is not None:
        save_figure(fig, path)


def quantile_bands(path, series, title, xlabel='step', ylabel='LPIPS', lo=0.25, hi=0.75, log_y=False, vline=None):
    """Per label of `series` ({label: curves `[N, T]`}), the median (line) and the [lo, hi] quantile band (shaded).
    log_y: logarithmic y axis; vline: None or (x, label) for a dotted vertical line (e.g. where truncation ends)."""
    fig = new_figure(size=(8.2, 5.2))
    ax = fig.add_subplot(1, 1, 1)
    for idx, (label, curves) in enumerate(series.items()):
        med, qa, qb = curve_quantiles(curves, lo, hi)
        steps = np.arange(len(med))
        color = f'C{idx}'
        ax.fill_between(steps, qa, qb, color=color, alpha=0.2, linewidth=0)
        ax.plot(steps, med, color=color, linewidth=2, label=f'{label} (median, {int(lo * 100)}-{int(hi * 100)}%)')
    if vline is not None:
        ax.axvline(vline[0], color='gray', linestyle=':')
        ax.annotate(vline[1], (vline[0], 1), xycoords=('data', 'axes fraction'), xytext=(4, -14),
                    textcoords='offset points', color='dimgray')
    if log_y:
        ax.set_yscale('log')
    else:
        ax.set_ylim(bottom=0)
    ax.set(xlabel=xlabel, ylabel=ylabel + (' (log scale)' if log_y else ''), title=title)
    ax.legend()
    save_figure(fig, path)


def labelled_lines(path, lines, title, xlabel, ylabel, log_y=False):
    """lines: [(label, y `[T]`, thin)] against 0..T-1; thin lines are drawn lighter (e.g. controls), the legend
    sits outside the axes."""
    fig = new_figure(size=(9.6, 5.6))
    ax = fig.add_subplot(1, 1, 1)
    for idx, (label, values, thin) in enumerate(lines):
        ax.plot(np.arange(len(values)), values, color=f'C{idx}', linewidth=1 if thin else 2.5, label=label)
    if log_y:
        ax.set_yscale('log')
    ax.grid(True, which='both', color='0.9')
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(loc='upper left', bbox_to_anchor=(1.02, 1), fontsize='small')
    save_figure(fig, path)


def points_and_levels_figure(series, levels, title, xlabel, ylabel):
    """series {label: [(x, y), ...]} as lines through dots in order of x (x need not be evenly spaced), levels
    {label: y} as dashed horizontal lines (references such as another model's value) -> the Figure."""
    fig = new_figure(size=(8.2, 5.2))
    ax = fig.add_subplot(1, 1, 1)
    for idx, (label, y) in enumerate(levels.items()):
        ax.axhline(y, color=str(0.3 + 0.3 * idx), linestyle='--', linewidth=1.5, label=label)
    for idx, (label, points) in enumerate(series.items()):
        x, y = zip(*sorted(points))
        ax.plot(x, y, color=f'C{idx}', marker='o', linewidth=2, label=label)
    ax.grid(True, color='0.9')
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend()
    return fig


def points_and_levels(path, series, levels, title, xlabel, ylabel):
    """`points_and_levels_figure` written to `path` as a PNG."""
    save_figure(points_and_levels_figure(series, levels, title, xlabel, ylabel), path)


def explained_variance(path, ratio):
    """Bars of the explained variance ratio `[k]` per component and the cumulative ratio (line)."""
    ratio = np.asarray(ratio, dtype=np.float64)
    fig = new_figure(size=(6.4, 4))
    ax = fig.add_subplot(1, 1, 1)
    components = np.arange(len(ratio))
    ax.bar(components, ratio, color='tab:blue', label='explained variance ratio')
    ax.plot(components, np.cumsum(ratio), color='tab:red', marker='.', label='cumulative')
    ax.set(xlabel='component', ylabel='fraction of the variance', title='GANSpace: explained variance', ylim=(0, 1.02))
    ax.legend()
    save_figure(fig, path)
