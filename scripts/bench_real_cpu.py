"""The real architecture end to end on CPU: a run of ``model=wan2.1_t2v_1.3b`` on the random-weight
1.3B bundle (``rvosflow.models.random_bundle``) -- DVI, gradient checkpointing, bf16, AdamW, EMA --
for 2 optimiser steps on tiny synthetic clips, then its one validation. Peak resident memory
and the time of each phase, as one JSON object.

    flock /tmp/rvosflow-heavy.lock python scripts/bench_real_cpu.py   # make bench-real-cpu: 1-7 min, 18.6 GB
    python scripts/bench_real_cpu.py --size reduced                     # same path, reduced DiT and VAE: seconds

The run is ``rvosflow.train.run`` on the config ``python run.py`` composes from the same overrides
(printed as ``command``), in a child process of its own, with a callback that timestamps the
phases of each step and a thread that samples the resident set every 0.1 s. ``peak_rss_gb`` is
the kernel's high-water mark of the child (``wait4``'s ``ru_maxrss``, what ``/usr/bin/time -v``
reports as "Maximum resident set size"); the samples say which phase it belongs to. The bundle
is built first (once; cached by its recipe) in a process of its own, measured the same way.
The checkpoint the run writes (14 GB at the real size) is deleted afterwards unless
``--keep-checkpoint``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))  # bench_scale's helpers

GB = 1e9


def overrides(bundle: Path, bench: Path, work: Path, frames: int, height: int, width: int) -> list[str]:
    """The 1.3B preset as it stands (bf16, checkpointing, EMA, AdamW, DVI from the defaults), on the
    CPU, on tiny clips: batch 1, 2 optimiser steps, no validation during fit, so the run's closing
    validation is its one validation (the first video of valid_u)."""
    return [
        "model=wan2.1_t2v_1.3b", f"model.path={bundle}",
        f"data.root={bench / 'mevis'}", f"data.num_frames={frames}", f"data.height={height}", f"data.max_width={width}",
        "data.batch_size=1", "data.val_batch_size=1", "data.eval_videos=1",
        "trainer.accelerator=cpu", "trainer.devices=1", "trainer.max_steps=2",
        "trainer.check_val_every_n_epoch=null", "trainer.val_check_interval=1000000",
        "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "num_overlays=0", "latent_cache_dir=null",  # the VAE encodes each clip inside its step, as a first epoch does
        f"text_cache_dir={work / 'text'}", f"logger.tracking_uri=sqlite:///{work / 'mlflow.db'}",
    ]


# ----------------------------------------------------------------------------- the child: the run itself
class RssSampler(threading.Thread):
    """This process's resident set size every ``interval`` seconds (psutil)."""

    def __init__(self, interval: float = 0.1):
        super().__init__(daemon=True)
        import psutil

        self.process, self.interval, self.samples, self.stopped = psutil.Process(), interval, [], threading.Event()

    def rss(self) -> int:
        return self.process.memory_info().rss

    def run(self) -> None:
        while not self.stopped.is_set():
            self.samples.append((time.perf_counter(), self.rss()))
            time.sleep(self.interval)


def phase_recorder(sampler: RssSampler):
    """A Lightning callback that records ``(name, start, end)`` spans: each step's VAE encoding,
    forward, backward, optimiser step (clipping + AdamW, then the EMA update inside it); checkpoint
    writes; validation.
    Built here so that the parent never imports Lightning."""
    import torch
    from lightning.pytorch.callbacks import Callback

    class PhaseRecorder(Callback):
        def __init__(self):
            self.spans: list[tuple[str, int, float, float]] = []  # (name, step, start, end)
            self.marks: dict[str, float] = {}
            self.state: dict = {}
            self._open: dict[str, float] = {}
            self.step = -1

        def _start(self, name):
            self._open[name] = time.perf_counter()

        def _end(self, name):
            self.spans.append((name, self.step, self._open.pop(name), time.perf_counter()))

        def _wrap(self, obj, attr, name):
            inner = getattr(obj, attr)

            def timed(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return inner(*args, **kwargs)
                finally:
                    self.spans.append((name, self.step, start, time.perf_counter()))

            setattr(obj, attr, timed)

        def setup(self, trainer, module, stage):
            if stage != "fit":
                return
            self.marks["fit_setup"] = time.perf_counter()
            self._wrap(module, "video_posteriors", "vae_encode")
            self._wrap(module, "mask_latents", "vae_encode")
            if module.ema is not None:
                self._wrap(module.ema, "step", "ema")  # inside the module's optimizer_step
            self._wrap(trainer.strategy.checkpoint_io, "save_checkpoint", "checkpoint_write")

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.step += 1
            self._start("forward")

        def on_before_backward(self, trainer, module, loss):
            self._end("forward")
            self._start("backward")

        def on_after_backward(self, trainer, module):
            self._end("backward")

        def on_before_optimizer_step(self, trainer, module, optimizer):
            self._start("optimizer")  # Lightning clips the gradients after this hook, then steps

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self._end("optimizer")
            if "adamw_state_bytes" not in self.state:  # after the first step: gradients and moments exist
                grads = [p.grad for p in module.transformer.parameters() if p.grad is not None]
                self.state["grad_bytes"] = sum(g.nbytes for g in grads)
                optimizer = trainer.optimizers[0]
                self.state["adamw_state_bytes"] = sum(t.nbytes for s in optimizer.state.values()
                                                      for t in s.values() if isinstance(t, torch.Tensor))
                self.state["rss_after_first_optimizer_step"] = sampler.rss()

        def on_fit_start(self, trainer, module):
            self.marks["fit_start"] = time.perf_counter()
            nbytes = lambda m: sum(t.nbytes for t in [*m.parameters(), *m.buffers()])  # noqa: E731
            self.state.update(
                rss_at_fit_start=sampler.rss(), dit_params=sum(p.numel() for p in module.transformer.parameters()),
                dit_weight_bytes=nbytes(module.transformer), vae_weight_bytes=nbytes(module.frozen.vae),
                ema_weight_bytes=sum(t.nbytes for t in module.ema.shadow_params) if module.ema is not None else 0)

        def on_validation_start(self, trainer, module):
            self._start("validation")

        def on_validation_end(self, trainer, module):
            self._end("validation")

    return PhaseRecorder()


def child(spec_path: Path) -> int:
    sampler = RssSampler()
    sampler.start()
    t0 = time.perf_counter()
    spec = json.loads(spec_path.read_text())
    from rvosflow.config import compose
    from rvosflow.train import run

    recorder = phase_recorder(sampler)
    results = run(compose(spec["overrides"]), spec["run_dir"], callbacks=[recorder])
    end = time.perf_counter()
    sampler.stopped.set()
    sampler.join()
    Path(spec["events"]).write_text(json.dumps({
        "t0": t0, "end": end, "marks": recorder.marks, "spans": recorder.spans, "state": recorder.state,
        "samples": sampler.samples, "JF": results["JF"], "checkpoint": results["checkpoint"],
        "text_max_length": results["config"]["text"]["max_length"],
        "precision": results["config"]["trainer"]["precision"], "ema_decay": results["config"]["ema"]["decay"],
    }))
    return 0


# ----------------------------------------------------------------------------- the parent: set up, measure, report
def measured(cmd: list[str], **kwargs) -> dict:
    """Run ``cmd``; its wall time and the kernel's peak resident set of that one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, **kwargs)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"error: {shlex.join(cmd)}: exited {proc.returncode}")
    return {"wall_s": round(time.perf_counter() - start, 1), "peak_rss_gb": round(usage.ru_maxrss * 1024 / GB, 2)}


def shown(path: Path) -> Path:
    """``path`` relative to the project root when it is inside it (the report is then the same on
    every checkout, and its command runs from the root)."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def summarise(events: dict) -> dict:
    """Seconds and peak sampled RSS per phase, per step."""
    spans, samples = events["spans"], events["samples"]

    def peak(start, end):
        inside = [rss for t, rss in samples if start <= t <= end]
        return round(max(inside) / GB, 2) if inside else None

    steps = []
    for step in sorted({s for _, s, _, _ in spans if s >= 0}):
        first = min(a for n, s, a, _ in spans if s == step and n == "forward")
        last = max(b for n, s, _, b in spans if s == step and n == "optimizer")
        seconds = {}
        for name, _, a, b in spans:  # the step's phases: what starts and ends inside its window
            if first <= a and b <= last and name in ("forward", "backward", "optimizer", "ema", "vae_encode"):
                seconds[name] = seconds.get(name, 0.0) + (b - a)
        seconds["dit_forward"] = seconds["forward"] - seconds.get("vae_encode", 0.0)  # forward holds the encoding
        seconds["optimizer"] -= seconds.get("ema", 0.0)  # clipping + AdamW; the EMA update is its own figure
        steps.append({"step": step + 1, "total_s": round(last - first, 3),
                      **{f"{k}_s": round(v, 3) for k, v in seconds.items() if k != "forward"},
                      "peak_rss_gb": peak(first, last)})
    writes = [(a, b) for n, _, a, b in spans if n == "checkpoint_write"]
    validation = [(a, b) for n, _, a, b in spans if n == "validation"]
    return {
        "setup_s": round(events["marks"]["fit_start"] - events["t0"], 1),
        "setup_peak_rss_gb": peak(events["t0"], events["marks"]["fit_start"]),
        "steps": steps,
        "checkpoint_writes": [{"seconds": round(b - a, 1), "peak_rss_gb": peak(a, b)} for a, b in writes],
        "validations": [{"seconds": round(b - a, 1), "peak_rss_gb": peak(a, b)} for a, b in validation],
        "total_s": round(events["end"] - events["t0"], 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("real", "reduced"), default="real")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="where the random bundle is built (default: data/wan2.1-t2v-1.3b-random for --size real)")
    parser.add_argument("--work", type=Path, default=None, help="data, run and caches (default: outputs/bench-real-cpu/<size>)")
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--keep-checkpoint", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        raise SystemExit(child(args.child))

    from bench_scale import machine

    from rvosflow.data.synthetic import SyntheticConfig, write_benchmark
    from rvosflow.models.random_bundle import SIZES
    from rvosflow.models.scale import dit_param_count, dit_tokens

    work = (args.work or ROOT / "outputs" / "bench-real-cpu" / args.size).resolve()
    bundle = (args.bundle or (ROOT / "data" / "wan2.1-t2v-1.3b-random" if args.size == "real" else work / "bundle")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"size": args.size, "bundle": str(shown(bundle)), "clip": [args.frames, args.height, args.width],
                    "machine": machine()}

    recipe = bundle / "recipe.json"
    before = recipe.stat().st_mtime_ns if recipe.exists() else None
    report["bundle_build"] = measured([sys.executable, "-m", "rvosflow.models.random_bundle", "--out", str(bundle),
                                       "--size", args.size], cwd=ROOT, stdout=subprocess.DEVNULL)
    report["bundle_build"]["reused"] = before == recipe.stat().st_mtime_ns  # the same recipe was already there
    # 2 training videos (up to 2 captions each), 1 scored video: a few tiny clips, a couple of captions
    bench = write_benchmark(work / "synthetic", SyntheticConfig(
        seed=0, frames=args.frames, height=args.height, width=args.width, train_videos=2, valid_u_videos=1,
        valid_videos=1, max_expressions=2), progress=False)
    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(work / "text", ignore_errors=True)  # the text cache is filled inside the run, every time
    ov = overrides(bundle, bench, work, args.frames, args.height, args.width)
    spec = work / "child.json"
    spec.write_text(json.dumps({"overrides": ov, "run_dir": str(run_dir), "events": str(work / "events.json")}))
    shown_ov = overrides(shown(bundle), shown(bench), shown(work), args.frames, args.height, args.width)
    report["command"] = shlex.join(["python", "run.py", *shown_ov, f"hydra.run.dir={shown(run_dir)}"])
    report["run"] = measured([sys.executable, __file__, "--child", str(spec)], cwd=ROOT)
    report["machine"]["load_average_after"] = os.getloadavg()  # 1, 5, 15 min: the 5-minute one spans the run
    events = json.loads((work / "events.json").read_text())
    report["run"].update(summarise(events))

    dit_config = SIZES[args.size][0]
    state = events["state"]
    report["settings"] = {"text_max_length": events["text_max_length"], "precision": events["precision"],
                          "ema_decay": events["ema_decay"], "tokens_per_clip": dit_tokens(dit_config, args.frames,
                                                                                          args.height, args.width)}
    report["accounted_gb"] = {  # what the live tensors alone take, from the module's own parameters
        "dit_weights": state["dit_weight_bytes"] / GB, "ema_weights": state["ema_weight_bytes"] / GB,
        "gradients": state["grad_bytes"] / GB, "adamw_moments": state["adamw_state_bytes"] / GB,
        "vae_weights": state["vae_weight_bytes"] / GB}
    report["accounted_gb"]["sum"] = sum(report["accounted_gb"].values())
    report["accounted_gb"] = {k: round(v, 3) for k, v in report["accounted_gb"].items()}
    report["rss_gb"] = {"at_fit_start": round(state["rss_at_fit_start"] / GB, 2),
                        "after_first_optimizer_step": round(state["rss_after_first_optimizer_step"] / GB, 2)}
    assert state["dit_params"] == dit_param_count(dit_config, 2 * 16), state["dit_params"]  # DVI-widened, full size
    report["dit_params"] = state["dit_params"]
    report["JF"] = events["JF"]
    checkpoint = Path(events["checkpoint"])
    report["checkpoint_gb"] = round(checkpoint.stat().st_size / GB, 3)
    if not args.keep_checkpoint:
        checkpoint.unlink()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
