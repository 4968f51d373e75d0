"""CLI: ``python -m rvosflow.data.synthetic --out DIR [--seed N --frames T --height H --width W ...]``."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from rvosflow.data.synthetic import SyntheticConfig, write_benchmark
from rvosflow.errors import ArgumentParser, cli
from rvosflow.paths import SYNTHETIC_ROOT


def main(argv: list[str] | None = None) -> int:
    """The CLI; bad input is one line, exit 2 (:func:`rvosflow.errors.cli`)."""
    return cli(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m rvosflow.data.synthetic", description=__doc__)
    p.add_argument("--out", type=Path, default=SYNTHETIC_ROOT, help=f"output directory (default {SYNTHETIC_ROOT})")
    for f in dataclasses.fields(SyntheticConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default, dest=f.name)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    cfg = SyntheticConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SyntheticConfig)})
    t0 = time.perf_counter()
    out = write_benchmark(args.out, cfg, progress=not args.quiet)
    dt = time.perf_counter() - t0
    counts = {}
    for split in ("train", "valid_u", "valid"):
        meta = json.loads((out / "mevis" / split / "meta_expressions.json").read_text())["videos"]
        counts[f"mevis/{split}"] = (len(meta), sum(len(v["expressions"]) for v in meta.values()))
    for name, path in (("ref_ytvos/train", "ref_ytvos/meta_expressions/train"),
                       ("ref_ytvos/valid", "ref_ytvos/meta_expressions/valid"),
                       ("ref_davis/valid", "ref_davis/meta_expressions/valid")):
        meta = json.loads((out / path / "meta_expressions.json").read_text())["videos"]
        counts[name] = (len(meta), sum(len(v["expressions"]) for v in meta.values()))
    print(f"synthetic benchmark at {out.resolve()} ({dt:.1f}s)")
    for name, (nv, ne) in counts.items():
        print(f"  {name:16s} {nv:4d} videos {ne:5d} expressions")
    n_img = len(list((out / "refcoco" / "images" / "train2014").glob("*.jpg")))
    print(f"  {'refcoco':16s} {n_img:4d} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
