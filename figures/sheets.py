"""Image sheets (PIL): panels upscaled by nearest neighbour, titled, captioned and labelled.

Images are uint8 `[H, W, C]` arrays (C = 1 or 3, or `[H, W]`); the functions return RGB uint8 `[H, W, 3]`.
"""

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

#----------------------------------------------------------------------------
# Fonts, text and pixels.

LINE_PX = 14                    # Height of one line of the small label font (`LABEL_FONT_PX`), with margins.
LABEL_FONT_PX = 10              # Labels of grids (`labelled_grid`, `titled`).
MIN_PANEL = 128                 # px: panels of titled pictures are upscaled to at least this.
MASK_TINT = (255, 0, 160)       # Colour laid over the ignored pixels of a masked target.


def font(size=14):
    """PIL's default font at `size` px (Pillow >= 10.1), else its small bitmap font."""
    try:
        return PIL.ImageFont.load_default(size=size)
    except TypeError:
        return PIL.ImageFont.load_default()


def text_width(draw, text, fnt):
    left, _, right, _ = draw.textbbox((0, 0), text, font=fnt)
    return right - left


def fit_text(draw, text, fnt, width):
    """`text`, shortened with '...' to fit `width` px."""
    if text_width(draw, text, fnt) <= width:
        return text
    while len(text) > 1 and text_width(draw, text + '...', fnt) > width:
        text = text[:-1]
    return text + '...'


def to_rgb(image):
    """uint8 `[H, W]` or `[H, W, 1|3]` -> `[H, W, 3]`."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def upscale(image, min_side=MIN_PANEL):
    """RGB `[kH, kW, 3]`: pixels repeated by the smallest integer k that makes the shorter side >= `min_side`."""
    image = to_rgb(image)
    k = max(1, -(-int(min_side) // max(1, min(image.shape[:2]))))
    return image.repeat(k, axis=0).repeat(k, axis=1) if k > 1 else image


def mask_overlay(image, mask, strength=0.7):
    """uint8 image `[H, W, C]` and mask `[H, W]` (255 = keep) -> RGB `[H, W, 3]` with the ignored part tinted."""
    ignored = (1 - mask.astype(np.float32) / 255)[:, :, None] * strength
    out = to_rgb(image).astype(np.float32) * (1 - ignored) + np.array(MASK_TINT, np.float32) * ignored
    return np.rint(out).astype(np.uint8)


def side_by_side(images):
    """uint8 `[H, W_i, C]` images of one height -> `[H, sum W_i, C]`, touching."""
    return np.concatenate(images, axis=1)


def stack_rows(rows, gap=0):
    """Rows of different widths -> one RGB image, each row padded with white on the right (and `gap` px below)."""
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(to_rgb(r), [(0, gap), (0, width - r.shape[1]), (0, 0)], constant_values=255)
                           for r in rows], axis=0)

#----------------------------------------------------------------------------
# Labels above and beside images.

def text_strip(width, lines, height=None):
    """White strip `[height, width, 3]` with `lines` of black label text, left-aligned."""
    height = height or LINE_PX * len(lines) + 4
    strip = PIL.Image.new('RGB', (int(width), int(height)), 'white')
    draw = PIL.ImageDraw.Draw(strip)
    fnt = font(LABEL_FONT_PX)
    for k, line in enumerate(lines):
        draw.text((3, 2 + LINE_PX * k), str(line), fill='black', font=fnt)
    return np.asarray(strip)


def titled(image, title):
    """`image` with a white strip holding `title` (str, or list of lines) above it."""
    image = to_rgb(image)
    lines = [title] if isinstance(title, str) else list(title)
    return np.concatenate([text_strip(image.shape[1], lines), image], axis=0)


def labelled_grid(cells, col_labels=None, row_labels=None, title=None, gap=2):
    """cells uint8 `[rows, cols, H, W, C]` -> one grid with a label over each column, one left of each
    row (in a column wide enough for the longest) and an optional title line on top."""
    rows, cols, h, w, _c = cells.shape
    label_w = 0 if row_labels is None else max(8 + 6 * max(len(str(s)) for s in row_labels), 40)
    head = 0 if col_labels is None else LINE_PX + 4
    out = np.full([head + rows * (h + gap), label_w + cols * (w + gap), 3], 255, dtype=np.uint8)
    for r in range(rows):
        for q in range(cols):
            y, x = head + r * (h + gap), label_w + q * (w + gap)
            out[y:y + h, x:x + w] = to_rgb(cells[r, q])
        if row_labels is not None:
            y = head + r * (h + gap) + max(0, h // 2 - LINE_PX // 2)
            out[y:y + LINE_PX + 4, :label_w] = text_strip(label_w, [row_labels[r]])[:min(LINE_PX + 4, out.shape[0] - y)]
    if col_labels is not None:
        for q in range(cols):
            x = label_w + q * (w + gap)
            out[:head, x:x + w] = text_strip(w, [col_labels[q]], height=head)
    return titled(out, title) if title else out


def titled_panels(panels, title=None, min_side=MIN_PANEL, font_size=14):
    """[(uint8 `[H, W, C]`, caption)] -> the panels side by side, each upscaled to >= `min_side` px and captioned
    underneath, with `title` above them."""
    tiles = [upscale(img, min_side) for img, _ in panels]
    fnt, pad = font(font_size), 4
    line = font_size + 6
    width = sum(t.shape[1] for t in tiles) + pad * (len(tiles) + 1)
    height = max(t.shape[0] for t in tiles) + line * (2 if title else 1) + pad * 2
    sheet = PIL.Image.new('RGB', (width, height), 'white')
    draw = PIL.ImageDraw.Draw(sheet)
    y0 = pad + (line if title else 0)
    if title:
        draw.text((pad, pad), fit_text(draw, title, fnt, width - 2 * pad), fill='black', font=fnt)
    x = pad
    for tile, (_, caption) in zip(tiles, panels):
        sheet.paste(PIL.Image.fromarray(tile), (x, y0))
        draw.text((x, y0 + tile.shape[0] + 2), fit_text(draw, caption, fnt, tile.shape[1]), fill='black', font=fnt)
        x += tile.shape[1] + pad
    return np.asarray(sheet)

#----------------------------------------------------------------------------
# Sheets of many images.

def target_recon_overview(entries, title, cols=8, min_side=MIN_PANEL, font_size=14):
    """entries [(name, target `[H, W, C]`, recon, lpips or None, mask `[H, W]` or None)] -> per image a column of
    target (ignored pixels tinted) over reconstruction, captioned with name and LPIPS; `title` on top."""
    fnt, pad, line = font(font_size), 6, font_size + 4
    tiles = [(n, upscale(mask_overlay(t, m) if m is not None else t, min_side), upscale(r, min_side), lp)
             for n, t, r, lp, m in entries]
    th, tw = tiles[0][1].shape[:2]
    cols = max(1, min(cols, len(tiles)))
    rows = -(-len(tiles) // cols)
    cell_w, cell_h = tw + pad, 2 * th + 2 * line + pad
    width, height = cols * cell_w + pad, rows * cell_h + line + 2 * pad
    sheet = PIL.Image.new('RGB', (width, height), 'white')
    draw = PIL.ImageDraw.Draw(sheet)
    draw.text((pad, pad), fit_text(draw, title, fnt, width - 2 * pad), fill='black', font=fnt)
    for i, (name, target, recon, lp) in enumerate(tiles):
        r, c = divmod(i, cols)
        x, y = pad + c * cell_w, 2 * pad + line + r * cell_h
        sheet.paste(PIL.Image.fromarray(target), (x, y))
        sheet.paste(PIL.Image.fromarray(recon), (x, y + th))
        draw.text((x, y + 2 * th + 1), fit_text(draw, name, fnt, tw), fill='black', font=fnt)
        draw.text((x, y + 2 * th + 1 + line), 'LPIPS n/a' if lp is None else f'LPIPS {lp:.4f}', fill='black',
                  font=fnt)
    return np.asarray(sheet)


def comparison_sheet(columns, titles, captions=None, row_labels=None, title=None, side=96, font_size=13):
    """Images side by side, one column per method.

    columns:    list of C lists of N uint8 images `[H, W, C]` (column 0 is usually the targets).
    titles:     C column headings.
    captions:   None or C lists of N strings (or None entries) drawn under each cell; a string may hold
                '\\n' for two lines.
    row_labels: None or N strings drawn left of each row.
    title:      None or a heading above everything (may hold '\\n'); the sheet is widened to fit it.
    """
    num_cols, num_rows = len(columns), len(columns[0])
    if any(len(col) != num_rows for col in columns) or len(titles) != num_cols:
        raise ValueError('comparison_sheet: every column needs the same number of images and one title')
    fnt, small = font(font_size + 1), font(font_size)
    pad, line = 6, font_size + 4
    cells = [[upscale(img, side) for img in col] for col in columns]
    cell_h, cell_w = cells[0][0].shape[:2]
    lines = 0
    if captions is not None:
        lines = max((str(c).count('\n') + 1) for col in captions for c in col if c is not None) if any(
            c is not None for col in captions for c in col) else 0
    probe = PIL.ImageDraw.Draw(PIL.Image.new('RGB', (1, 1)))
    label_w = 0 if row_labels is None else max(text_width(probe, str(s), small) for s in row_labels) + 2 * pad
    col_w = max(cell_w, max(text_width(probe, t, fnt) for t in titles) + pad)
    if captions is not None:
        widest = max((text_width(probe, part, small) for col in captions for c in col if c is not None
                      for part in str(c).split('\n')), default=0)
        col_w = max(col_w, widest + 2)
    title_lines = [] if not title else str(title).split('\n')
    top = pad + len(title_lines) * (line + 2) + (pad if title_lines else 0) + line + 2
    row_h = cell_h + lines * line + pad
    width = label_w + num_cols * (col_w + pad) + pad
    width = max([width] + [text_width(probe, t, fnt) + 2 * pad for t in title_lines])
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
# Face alignment: a photo with the crops found in it.

def alignment_row(label, image, crops, height=192):
    """One labelled row: the photo scaled to `height` px with each crop's square (red, top edge yellow) and eye
    centres (green) drawn, then the crops. crops: [(name, quad `[4, 2]`, eyes `[2, 2]` (px), crop `[h, w, 3]`)]."""
    scale = height / image.shape[0]
    thumb = PIL.Image.fromarray(image).resize((max(int(round(image.shape[1] * scale)), 1), height), PIL.Image.LANCZOS)
    draw = PIL.ImageDraw.Draw(thumb)
    tiles = [thumb]
    for _name, quad, eyes, crop in crops:
        corners = [tuple((p + 0.5) * scale) for p in quad]
        draw.polygon(corners, outline=(255, 0, 0))
        draw.line([corners[0], corners[3]], fill=(255, 255, 0), width=2)   # the top edge
        for p in eyes:
            x, y = (p + 0.5) * scale
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(0, 255, 0))
        tiles.append(PIL.Image.fromarray(crop).resize((height, height), PIL.Image.LANCZOS))
    width = sum(t.width for t in tiles) + 4 * (len(tiles) - 1)
    row = PIL.Image.new('RGB', (width, height + 16), (255, 255, 255))
    x = 0
    for t in tiles:
        row.paste(t, (x, 16))
        x += t.width + 4
    text = f'{label}: ' + (', '.join(c[0] for c in crops) if crops else 'no crop')
    PIL.ImageDraw.Draw(row).text((2, 2), text, fill=(0, 0, 0))
    return np.asarray(row)
