"""Data checked at setup: every split the run reads and every file it references, before any training.

A split without expressions; a missing, empty, undecodable or cut-short frame (a JPEG without its
end-of-image marker); a frame or mask at another size than its video; an RLE of the wrong size,
whose runs do not sum to H*W, or that is not RLE at all: each is found from file headers and ends
and the JSON already read (no pixel decoded, no mask built), and all are reported together in one
:class:`DatasetFormatError` (the first ``limit`` and a count), instead of one at a time after the
model is loaded or at the first validation, after training.
"""

from __future__ import annotations

import logging
import time

from rvosflow.data.formats.base import DatasetFormatError

log = logging.getLogger(__name__)


def find_problems(sources) -> list[str]:
    """Every problem of the files ``sources`` reference, in order, each once."""
    problems: dict[str, None] = {}
    for source in sources:
        for problem in source.check_files():
            problems.setdefault(problem, None)
    return list(problems)


def check_sources(sources, limit: int = 5) -> float:
    """Raise one DatasetFormatError naming the first ``limit`` problems and their count; return
    the seconds the check took."""
    t0 = time.perf_counter()
    problems = find_problems(sources)
    seconds = time.perf_counter() - t0
    if problems:
        more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
        raise DatasetFormatError(f"data: expected every split to hold expressions and every file it references "
                                 f"complete and at its video's size, found {len(problems)} problem(s): "
                                 + "; ".join(problems[:limit]) + more)
    log.info("data checked in %.2f s (%d sources)", seconds, len(sources))
    return seconds
