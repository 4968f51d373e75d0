"""The paper's training/evaluation protocols as chains of runs (each one `python run.py` config).

    python -m experiments.ytvos_protocol [--real] [--out DIR] [KEY=VALUE | STAGE:KEY=VALUE ...]
    python -m experiments.mevis_protocol [--real] [--out DIR] [...]

``ytvos`` (FlowRVS §4 / Table 4): RefCOCO/+/g 2D pre-training -> Ref-YouTube-VOS fine-tuning with
the DiT initialised from stage 1 (``init_from``) -> Ref-YouTube-VOS ``valid`` predicted and
scored/zipped -> Ref-DAVIS17 zero-shot with the stage-2 weights (``mode=validate``, then predicted
and scored per annotator set by :mod:`rvosflow.evaluate`). ``mevis``: MeViS from scratch ->
``valid_u`` scored officially -> ``valid`` zipped for the server.

Every stage is a Hydra preset ``+experiment=<name>`` (``configs/experiment/``); the synthetic
presets (``synthetic_*``, the default here) run on the embedded benchmark and tiny Wan with short
schedules, ``--real`` uses the Table 4 presets. Overrides apply to every stage, or to one stage
with a ``STAGE:`` prefix (``pretrain:data.root=/data/refcoco``). Each stage writes into
``<out>/<stage>/`` and the chain's summary goes to ``<out>/protocol.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from rvosflow.config import compose
from rvosflow.errors import cli
from rvosflow.evaluate import evaluate
from rvosflow.paths import PROJECT_ROOT
from rvosflow.train import run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One run of the chain. ``init_from`` / ``ckpt_from`` name an earlier stage whose checkpoint
    starts training / is evaluated; ``evaluate`` = (benchmark, split) scored after a predict run."""

    name: str
    experiment: str
    mode: str = "train"
    init_from: str | None = None
    ckpt_from: str | None = None
    predict_split: str | None = None
    evaluate: tuple[str, str] | None = None
    extra: tuple[str, ...] = field(default_factory=tuple)


PROTOCOLS: dict[str, list[Stage]] = {
    "ytvos": [
        Stage("pretrain", "refcoco_pretrain"),
        Stage("finetune", "ytvos_finetune", init_from="pretrain"),
        Stage("ytvos_valid", "ytvos_finetune", mode="predict", ckpt_from="finetune", predict_split="valid",
              evaluate=("ref_ytvos", "valid"), extra=("init_from=null",)),
        Stage("davis_zeroshot", "davis_zeroshot", mode="validate", ckpt_from="finetune"),
        Stage("davis_official", "davis_zeroshot", mode="predict", ckpt_from="finetune", predict_split="valid",
              evaluate=("ref_davis", "valid")),
    ],
    "mevis": [
        Stage("train", "mevis"),
        Stage("valid_u", "mevis", mode="predict", ckpt_from="train", predict_split="valid_u",
              evaluate=("mevis", "valid_u")),
        Stage("valid", "mevis", mode="predict", ckpt_from="train", predict_split="valid", evaluate=("mevis", "valid")),
    ],
}


def stage_overrides(overrides: list[str], stage: str) -> list[str]:
    """Global overrides plus those prefixed ``<stage>:``."""
    names = {s.name for p in PROTOCOLS.values() for s in p}
    out = []
    for o in overrides:
        head, sep, rest = o.partition(":")
        if sep and head in names and "=" in rest:
            if head == stage:
                out.append(rest)
        else:
            out.append(o)
    return out


def run_protocol(name: str, out_dir: str | Path, real: bool = False, overrides: list[str] | tuple = ()) -> dict:
    """Run every stage of ``PROTOCOLS[name]`` in order; return (and write) the summary."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; allowed: {', '.join(PROTOCOLS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {"protocol": name, "real": real, "overrides": list(overrides), "stages": {}}
    ckpts: dict[str, str] = {}
    t_all = time.perf_counter()
    for st in PROTOCOLS[name]:
        t0 = time.perf_counter()
        run_dir = out_dir / st.name
        ov = [f"+experiment={st.experiment if real else 'synthetic_' + st.experiment}", f"mode={st.mode}",
              f"logger.run_name={name}-{st.name}", *st.extra]
        if st.init_from:
            ov.append(f"init_from={ckpts[st.init_from]}")
        if st.ckpt_from:
            ov.append(f"ckpt_path={ckpts[st.ckpt_from]}")
        if st.predict_split:
            ov += [f"data.predict_split={st.predict_split}", f"predict.out_dir={run_dir / 'predictions'}"]
        ov += stage_overrides(list(overrides), st.name)
        cfg = compose(ov)
        log.info("[%s/%s] %s", name, st.name, " ".join(ov))
        res = run(cfg, run_dir, tags={"protocol": name, "protocol_dir": str(out_dir)})
        entry = {"overrides": ov, "run_dir": str(run_dir), "mlflow_run_id": res.get("mlflow_run_id")}
        if st.mode == "train":
            ckpts[st.name] = res["checkpoint"]
            entry["checkpoint"] = res["checkpoint"]
        if res.get("JF") is not None:
            entry.update(J=res["J"], F=res["F"], JF=res["JF"])
        if st.evaluate:
            bench, split = st.evaluate
            scores = evaluate(bench, cfg.data.root, split, res["predictions"], run_dir / f"{bench}_{split}.json",
                              videos=cfg.data.get("eval_videos"))
            entry["evaluation"] = {k: v for k, v in scores.items() if k not in ("per_expression",)}
            if "sets" in scores:
                entry["evaluation"]["sets"] = {k: {m: v for m, v in s.items() if m != "per_object"}
                                               for k, s in scores["sets"].items()}
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        summary["stages"][st.name] = entry
        (out_dir / "protocol.json").write_text(json.dumps(summary, indent=2))
    summary["seconds"] = round(time.perf_counter() - t_all, 1)
    (out_dir / "protocol.json").write_text(json.dumps(summary, indent=2))
    return summary


def format_summary(summary: dict) -> str:
    lines = [f"protocol {summary['protocol']} ({'real' if summary['real'] else 'synthetic'}), "
             f"{summary.get('seconds', 0):.0f} s"]
    for name, e in summary["stages"].items():
        line = f"  {name:15s} {e['seconds']:6.0f} s"
        if "JF" in e:
            line += f"  J&F {e['JF']:.1f}  J {e['J']:.1f}  F {e['F']:.1f} (in-run validation)"
        ev = e.get("evaluation", {})
        if "JF" in ev:
            line += f"  official J&F {ev['JF']:.1f}  J {ev['J']:.1f}  F {ev['F']:.1f}"
        if "submission" in ev:
            line += f"  zip {ev['submission']['zip']}"
        lines.append(line)
        for set_name, s in ev.get("sets", {}).items():
            lines.append(f"      {set_name:20s} J&F {s['JF']:.1f}  J {s['J']:.1f}  F {s['F']:.1f}")
    return "\n".join(lines)


def main(protocol: str, argv=None) -> int:
    """The CLI of ``experiments/*_protocol.py``; bad input is one line, exit 2."""
    return cli(lambda a: _main(protocol, a), argv)


def _main(protocol: str, argv=None) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m experiments.{protocol}_protocol", description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", action="store_true", help="the Table 4 presets on the real datasets and Wan2.1-T2V-1.3B")
    ap.add_argument("--out", default=None, help="output folder (default outputs/protocols/<name>-<time>)")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE for every stage, or STAGE:KEY=VALUE")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = args.out or PROJECT_ROOT / "outputs" / "protocols" / f"{protocol}-{datetime.now():%Y%m%d-%H%M%S}"
    summary = run_protocol(protocol, out, args.real, args.overrides)
    print(format_summary(summary))
    print(f"-> {Path(out) / 'protocol.json'}")
    return 0
