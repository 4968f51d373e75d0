"""What a split is, in a few numbers: a digest that changes when its content changes, and its size.

The digest hashes the parsed expressions (video, id, text, objects, frames, kind) and the identity
(path under the split, size, mtime) of every file the split reads: its annotation files and the
frames of the videos it references. No pixel is read, so it costs one ``stat`` per file; a file
rewritten with the same bytes (a copy without ``cp -p``) also changes it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def _identity(path: Path, root: Path) -> tuple:
    try:
        st = path.stat()
    except FileNotFoundError:  # a run checks its files at set-up: this is a split whose files went away since
        return str(path), None
    try:
        name = str(path.relative_to(root))
    except ValueError:  # RefCOCO's images, a concatenated source's second part
        name = str(path)
    return name, st.st_size, st.st_mtime_ns


def files(source) -> list[Path]:
    """Every file ``source`` reads: its annotation files, then the frames of its videos."""
    return [*source.annotation_files(), *(p for v in source.video_ids() for p in source.frame_paths(v))]


def digest(source) -> str:
    """10 hex digits (MLflow's advice for a data set's digest) of the split's expressions and files."""
    h = hashlib.blake2b(digest_size=5)
    for e in source.expressions:
        h.update(repr((e.video_id, e.exp_id, e.text, e.obj_ids, e.frame_names, e.annotator, e.kind)).encode())
    root = Path(source.root)
    for path in files(source):
        h.update(repr(_identity(path, root)).encode())
    return h.hexdigest()


def profile(source) -> dict:
    """The split's size: videos, expressions, frames, and whether it has masks."""
    videos = source.video_ids()
    return {"videos": len(videos), "expressions": len(source.expressions),
            "frames": sum(len(source.frame_paths(v)) for v in videos), "has_masks": bool(source.has_masks)}
