"""Per-rank bookkeeping of a sharded per-image run (`torchrun --nproc_per_node=K invert.py ...`).

Every rank writes its images' per-image files (`<name>.npy`, PNGs) straight into the run folder
(names are unique, so ranks never write the same file) and its run-level bookkeeping into
`shards/` instead of the shared files:

    shards/results-<rank>.jsonl     finished images of this rank (the completion markers)
    shards/curves-<rank>.npz        LPIPS curves known to this rank (lpips_curves.npz format)
    shards/skipped-<rank>.json      this rank's full skipped list (it starts from skipped.json)

Rank 0 folds the shards into `results.jsonl`, `lpips_curves.npz` and `skipped.json`
(`merge_shards`) when all ranks are done, and again at the start of the next run, so that the
shards of a killed sharded run are kept whatever the number of processes of the run that resumes
it. Merging is idempotent: a merge killed half-way is simply done again.
"""

import json
from pathlib import Path

from torch_utils.files import save_json

from . import run_files

SHARD_DIR = 'shards'


def shard_paths(outdir, rank):
    """{'results', 'curves', 'skipped'}: this rank's bookkeeping files in `<outdir>/shards/`."""
    root = Path(outdir) / SHARD_DIR
    return dict(results=root / f'results-{rank}.jsonl', curves=root / f'curves-{rank}.npz',
                skipped=root / f'skipped-{rank}.json')


def _shard_files(root, pattern):
    return sorted(root.glob(pattern), key=lambda p: (len(p.name), p.name))     # rank order: 0, 1, ..., 10


def merge_shards(outdir, log=None):
    """Fold every `shards/*` file into the run-level files, then remove them; returns the number of
    images added to results.jsonl. A damaged shard file is logged and ignored (its images are redone)."""
    outdir = Path(outdir)
    root = outdir / SHARD_DIR
    if not root.is_dir():
        return 0
    log = log or (lambda msg: None)
    results_path = outdir / 'results.jsonl'
    results = run_files.read_results(results_path)
    before = len(results)
    for path in _shard_files(root, 'results-*.jsonl'):
        results.update(run_files.read_results(path, repair=False))              # Torn last line: dropped.
    try:
        curves = run_files.read_curves(outdir / 'lpips_curves.npz')
    except (OSError, ValueError, KeyError, EOFError):
        curves = {}
    for path in _shard_files(root, 'curves-*.npz'):
        try:
            curves.update(run_files.read_curves(path))
        except (OSError, ValueError, KeyError, EOFError):
            log(f'{path} is damaged; the curves it held are lost')
    skipped_path = outdir / 'skipped.json'
    skipped = read_skipped(skipped_path) or {}
    base = dict(skipped)
    for path in _shard_files(root, 'skipped-*.json'):
        shard = read_skipped(path)
        if shard is None:
            log(f'{path} is damaged; ignoring it')
            continue
        for source in base:                                                  # Readable again on that rank.
            if source not in shard:
                skipped.pop(source, None)
        skipped.update({s: r for s, r in shard.items() if s not in base})
    if len(results) != before or not results_path.is_file():
        run_files.rewrite_results(results_path, results)
    run_files.write_curves(outdir / 'lpips_curves.npz', curves)
    save_json(skipped_path, list(skipped.values()))
    for path in list(root.iterdir()):
        if path.is_file():
            path.unlink(missing_ok=True)
    try:
        root.rmdir()
    except OSError:
        pass
    return len(results) - before


def read_skipped(path):
    """{source: record} of a skipped.json-format file; {} when missing, None when damaged."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        return {r['source']: r for r in json.loads(path.read_text())}
    except (OSError, ValueError, KeyError, TypeError):
        return None
