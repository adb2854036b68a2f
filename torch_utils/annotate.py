"""Labelled pictures for people: nearest-neighbour upscaling, a title strip, labelled grids (PIL only).

All functions take and return uint8 `[H, W, C]` arrays (C = 1 or 3); grayscale inputs come back RGB.
"""

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

LINE_PX = 14                                     # Height of one line of PIL's default font, with margins.


def upscale_nearest(image, min_size=128):
    """Repeat pixels by the smallest integer factor that makes the shorter side >= `min_size`."""
    h, w = image.shape[:2]
    factor = max(1, -(-int(min_size) // max(1, min(h, w))))
    return image.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else image


def _rgb(image):
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def _text_strip(width, lines, height=None):
    """White strip `[height, width, 3]` with `lines` of black text, left-aligned."""
    height = height or LINE_PX * len(lines) + 4
    strip = PIL.Image.new('RGB', (int(width), int(height)), 'white')
    draw = PIL.ImageDraw.Draw(strip)
    font = PIL.ImageFont.load_default()
    for k, line in enumerate(lines):
        draw.text((3, 2 + LINE_PX * k), str(line), fill='black', font=font)
    return np.asarray(strip)


def titled(image, title):
    """`image` with a white strip holding `title` (str, or list of lines) above it."""
    image = _rgb(image)
    lines = [title] if isinstance(title, str) else list(title)
    return np.concatenate([_text_strip(image.shape[1], lines), image], axis=0)


def labelled_grid(cells, col_labels=None, row_labels=None, title=None, gap=2):
    """cells uint8 `[rows, cols, H, W, C]` -> one grid with a label over each column, one left of each
    row (`row_labels`, drawn in a column `LABEL_W` wide) and an optional title line on top."""
    rows, cols, h, w, _c = cells.shape
    label_w = 0 if row_labels is None else max(8 + 6 * max(len(str(s)) for s in row_labels), 40)
    head = 0 if col_labels is None else LINE_PX + 4
    out = np.full([head + rows * (h + gap), label_w + cols * (w + gap), 3], 255, dtype=np.uint8)
    for r in range(rows):
        for q in range(cols):
            y, x = head + r * (h + gap), label_w + q * (w + gap)
            out[y:y + h, x:x + w] = _rgb(cells[r, q])
        if row_labels is not None:
            y = head + r * (h + gap) + max(0, h // 2 - LINE_PX // 2)
            out[y:y + LINE_PX + 4, :label_w] = _text_strip(label_w, [row_labels[r]])[:min(LINE_PX + 4, out.shape[0] - y)]
    if col_labels is not None:
        for q in range(cols):
            x = label_w + q * (w + gap)
            out[:head, x:x + w] = _text_strip(w, [col_labels[q]], height=head)
    return titled(out, title) if title else out
