"""Data checked at setup: every file the run's splits reference, before any training.

A missing, empty or undecodable frame, a frame or mask at another size than its video, an RLE of
the wrong size: each is found from file headers and the JSON already read (no pixel decoded), and
all are reported together in one :class:`DatasetFormatError` (the first ``limit`` and a count),
instead of one at a time at the first validation, after training.
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
        raise DatasetFormatError(f"data: expected every referenced file readable at its video's size, found "
                                 f"{len(problems)} problem(s): " + "; ".join(problems[:limit]) + more)
    log.info("data checked in %.2f s (%d sources)", seconds, len(sources))
    return seconds
