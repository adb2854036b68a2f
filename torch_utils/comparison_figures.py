"""Two pictures that compare methods, drawn with PIL only (no matplotlib on the CPU machines).

* `comparison_sheet`: a grid with one column per method (targets first), one row per image, every
  cell upscaled (nearest neighbour) and captioned underneath (e.g. its LPIPS and PSNR).
* `quantile_plot`: per method, the median curve and a shaded band between two quantiles of many
  curves (LPIPS against the optimisation step: figure 6 of the paper).

Images are uint8 `[H, W, C]` (C = 1 or 3); the functions return RGB uint8 `[H, W, 3]`.
"""

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

#----------------------------------------------------------------------------

PALETTE = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207))


def font(size=14):
    """PIL's default font at `size` px (Pillow >= 10.1), else its small bitmap font."""
    try:
        return PIL.ImageFont.load_default(size=size)
    except TypeError:
        return PIL.ImageFont.load_default()


def _rgb_upscaled(image, side):
    """uint8 `[H, W, C]` -> RGB `[kH, kW, 3]` with the smallest integer k such that kH >= side."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    k = max(1, -(-int(side) // image.shape[0]))
    return image.repeat(k, axis=0).repeat(k, axis=1)


def _text_width(draw, text, fnt):
    left, _, right, _ = draw.textbbox((0, 0), text, font=fnt)
    return right - left

#----------------------------------------------------------------------------

def comparison_sheet(columns, titles, captions=None, row_labels=None, title=None, side=96, font_size=13):
    """Images side by side, one column per method.

    columns:    list of C lists of N uint8 images `[H, W, C]` (column 0 is usually the targets).
    titles:     C column headings.
    captions:   None or C lists of N strings (or None entries) drawn under each cell; a string may hold
                '\\n' for two lines.
    row_labels: None or N strings drawn left of each row.
    title:      None or a heading above everything (may hold '\\n'); the sheet is widened to fit it.
    Returns RGB uint8 `[height, width, 3]`.
    """
    num_cols, num_rows = len(columns), len(columns[0])
    if any(len(col) != num_rows for col in columns) or len(titles) != num_cols:
        raise ValueError('comparison_sheet: every column needs the same number of images and one title')
    fnt, small = font(font_size + 1), font(font_size)
    pad, line = 6, font_size + 4
    cells = [[_rgb_upscaled(img, side) for img in col] for col in columns]
    cell_h, cell_w = cells[0][0].shape[:2]
    lines = 0
    if captions is not None:
        lines = max((str(c).count('\n') + 1) for col in captions for c in col if c is not None) if any(
            c is not None for col in captions for c in col) else 0
    probe = PIL.ImageDraw.Draw(PIL.Image.new('RGB', (1, 1)))
    label_w = 0 if row_labels is None else max(_text_width(probe, str(s), small) for s in row_labels) + 2 * pad
    col_w = max(cell_w, max(_text_width(probe, t, fnt) for t in titles) + pad)
    if captions is not None:
        widest = max((_text_width(probe, part, small) for col in captions for c in col if c is not None
                      for part in str(c).split('\n')), default=0)
        col_w = max(col_w, widest + 2)
    title_lines = [] if not title else str(title).split('\n')
    top = pad + len(title_lines) * (line + 2) + (pad if title_lines else 0) + line + 2
    row_h = cell_h + lines * line + pad
    width = label_w + num_cols * (col_w + pad) + pad
    width = max([width] + [_text_width(probe, t, fnt) + 2 * pad for t in title_lines])
    height = top + num_rows * row_h + pad
    sheet = PIL.Image.new('RGB', (width, height), 'white')
    draw = PIL.ImageDraw.Draw(sheet)
    for k, text in enumerate(title_lines):
        draw.text((pad, pad + k * (line + 2)), text, fill='black', font=fnt)
    for q, heading in enumerate(titles):
        x = label_w + pad + q * (col_w + pad)
        draw.text((x, top - line - 2), heading, fill='black', font=fnt)
    for r in range(num_rows):
        y = top + r * row_h
        if row_labels is not None:
            draw.text((pad, y + cell_h // 2 - line // 2), str(row_labels[r]), fill='black', font=small)
        for q in range(num_cols):
            x = label_w + pad + q * (col_w + pad)
            sheet.paste(PIL.Image.fromarray(cells[q][r]), (x, y))
            text = None if captions is None else captions[q][r]
            if text is not None:
                for k, part in enumerate(str(text).split('\n')):
                    draw.text((x, y + cell_h + 1 + k * line), part, fill='black', font=small)
    return np.asarray(sheet)

#----------------------------------------------------------------------------

def curve_quantiles(curves, lo=0.25, hi=0.75):
    """curves `[N, T]` (NaN = missing) -> (median `[T]`, lower quantile `[T]`, upper quantile `[T]`)."""
    arr = np.asarray(curves, dtype=np.float64)
    with np.errstate(all='ignore'):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', RuntimeWarning)                 # all-NaN columns stay NaN
            return (np.nanmedian(arr, axis=0), np.nanquantile(arr, lo, axis=0), np.nanquantile(arr, hi, axis=0))


def quantile_plot(series, title, xlabel='step', ylabel='LPIPS', lo=0.25, hi=0.75, size=(820, 520), log_y=False,
                  vline=None):
    """series: {label: curves `[N, T]`} -> RGB uint8 plot of each label's median (line) and [lo, hi]
    quantile band (light fill). log_y: logarithmic y axis (values <= 0 are clipped to the smallest
    positive one). vline: None or (x, label) for a dotted vertical line (e.g. where truncation ends)."""
    w, h = size
    left, right, top, bottom = 78, 24, 58, 56
    stats = {k: curve_quantiles(v, lo, hi) for k, v in series.items()}
    length = max(len(m) for m, _, _ in stats.values())
    values = np.concatenate([np.concatenate([m, a, b]) for m, a, b in stats.values()])
    values = values[np.isfinite(values)]
    if log_y:
        positive = values[values > 0]
        y_lo, y_hi = (float(positive.min()), float(positive.max())) if positive.size else (1e-3, 1.0)
        y_lo, y_hi = np.log10(y_lo) - 0.05, np.log10(y_hi) + 0.05
    else:
        y_lo, y_hi = 0.0, (float(values.max()) * 1.05 if values.size and values.max() > 0 else 1.0)
    if y_hi <= y_lo:
        y_hi = y_lo + 1.0
    n_steps = max(length - 1, 1)
    img = PIL.Image.new('RGB', size, 'white')
    draw = PIL.ImageDraw.Draw(img, 'RGBA')
    fnt, small = font(15), font(12)

    def to_y(v):
        v = np.log10(max(v, 10 ** y_lo)) if log_y else v
        return h - bottom - (h - top - bottom) * (v - y_lo) / (y_hi - y_lo)

    def to_x(step):
        return left + (w - left - right) * step / n_steps

    draw.rectangle([left, top, w - right, h - bottom], outline='black')
    for k in range(6):                                                      # y ticks
        frac = k / 5
        v = y_lo + frac * (y_hi - y_lo)
        shown = 10 ** v if log_y else v
        y = h - bottom - (h - top - bottom) * frac
        draw.line([left - 4, y, left, y], fill='black')
        draw.text((4, y - 7), f'{shown:.3g}', fill='black', font=small)
    for k in range(5):                                                      # x ticks at quarters
        step = round(n_steps * k / 4)
        x = to_x(step)
        draw.line([x, h - bottom, x, h - bottom + 4], fill='black')
        draw.text((x - 10, h - bottom + 6), str(step), fill='black', font=small)
    draw.text((left, 12), title, fill='black', font=fnt)
    draw.text(((left + w - right) // 2 - 15, h - 24), xlabel, fill='black', font=small)
    draw.text((4, top - 18), ylabel + (' (log scale)' if log_y else ''), fill='black', font=small)
    if vline is not None:
        x = to_x(vline[0])
        for y in range(top, h - bottom, 6):
            draw.line([x, y, x, y + 2], fill=(120, 120, 120))
        draw.text((x + 4, top + 4), vline[1], fill=(90, 90, 90), font=small)
    for idx, (label, (med, qa, qb)) in enumerate(stats.items()):
        color = PALETTE[idx % len(PALETTE)]
        ok = np.isfinite(med) & np.isfinite(qa) & np.isfinite(qb)
        steps = np.nonzero(ok)[0]
        if steps.size > 1:
            band = [(to_x(s), to_y(qb[s])) for s in steps] + [(to_x(s), to_y(qa[s])) for s in steps[::-1]]
            draw.polygon(band, fill=color + (50,))
            draw.line([(to_x(s), to_y(med[s])) for s in steps], fill=color + (255,), width=3)
        ly = top + 8 + 18 * idx
        draw.line([w - right - 230, ly + 7, w - right - 205, ly + 7], fill=color + (255,), width=3)
        draw.text((w - right - 200, ly), f'{label} (median, {int(lo * 100)}-{int(hi * 100)}%)', fill='black',
                  font=small)
    return np.asarray(img)

#----------------------------------------------------------------------------
