"""Benchmark (not a test): where the time of one training iteration goes, for any training config.

Run from the repository root (``configs`` are relative to the bundle root)::

    python -m tools.benchmark_training run                                         # the default (MRI-GAN)
    python -m tools.benchmark_training run --configs "['configs/train.yaml','configs/supervised.yaml']"
    python -m tools.benchmark_training run --iterations 20 --out bundle/docs/benchmarks/training_profile_cpu.json

The run trains ``warmup + iterations`` iterations of the config on its data (the default: the anatomy cohort,
rendered on first use as the main job does; ``--dataset_format phantom`` for the phantoms), with checkpoints and
logs in a temporary folder, then validates once. Ignite's ``BasicTimeProfiler`` splits each iteration into waiting
for the labelled batch, the process function and the event handlers; ``torch.profiler`` splits the process function
into the trainer's labelled ranges (``record_function`` in bundle/scripts/engines/gan.py) and lists the costliest
operators. The first ``warmup`` iterations (worker start, allocator warm-up) are left out of every figure. The whole
iteration is given as a median and a mean: with ``gan#generator_interval`` 2, iterations that update the generator
alternate with cheaper ones. ``gan_ramp`` is forced on so that a GAN config is timed with all its terms, as after
its warm-up.
"""

from __future__ import annotations

import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import fire

from tools import BUNDLE_ROOT

RANGES = (
    "unlabelled batch",
    "generator forward",
    "discriminator forward",
    "discriminator backward and update",
    "generator step",
)


def _median_ms(values, start: int) -> float:
    return 1000 * statistics.median([float(v) for v in values[start:]])


def _mean_ms(values, start: int) -> float:
    return 1000 * statistics.fmean([float(v) for v in values[start:]])


def profile(configs=("configs/train.yaml",), iterations: int = 20, warmup: int = 5, top: int = 12, **overrides) -> dict:
    """Train ``warmup + iterations`` iterations of ``configs`` (with ``overrides``) and return the breakdown."""
    import torch
    from ignite.engine import Events
    from ignite.handlers import BasicTimeProfiler
    from monai.bundle import ConfigParser
    from torch.profiler import ProfilerActivity, schedule

    total = warmup + iterations
    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / c) for c in ([configs] if isinstance(configs, str) else configs)])
    unknown = [key for key in overrides if key not in parser]  # e.g. --help, which fire passes on as an override
    if unknown:
        raise ValueError(f"{unknown} are not keys of {configs}: nothing was run (the arguments: {profile.__doc__})")
    with tempfile.TemporaryDirectory() as tmp:
        settings = {
            "bundle_root": str(BUNDLE_ROOT),
            "output_dir": f"{tmp}/runs",
            "ckpt_dir": f"{tmp}/models",
            "iterations": total,
            "schedule#epoch_length": total,
            "schedule#val_interval": 1,
        }
        settings.update(overrides)
        for key, value in settings.items():
            parser[key] = value
        start = time.perf_counter()
        parser.get_parsed_content("initialize")
        trainer = parser.get_parsed_content("train#trainer")
        evaluator = parser.get_parsed_content("validate#evaluator")
        setup_seconds = time.perf_counter() - start
        if hasattr(trainer, "gan_ramp"):
            trainer.gan_ramp = lambda iteration: 1.0

        timer = BasicTimeProfiler()
        timer.attach(trainer)
        # it sizes its buffers by len(dataloader), not by the trainer's epoch_length
        trainer.add_event_handler(Events.STARTED, lambda e: timer._reset(e.state.max_epochs, e.state.max_epochs * e.state.epoch_length))
        validation = {}
        evaluator.add_event_handler(Events.STARTED, lambda e: validation.setdefault("start", time.perf_counter()))
        evaluator.add_event_handler(Events.COMPLETED, lambda e: validation.setdefault("end", time.perf_counter()))
        profiler = torch.profiler.profile(
            activities=[ProfilerActivity.CPU], schedule=schedule(wait=0, warmup=warmup, active=iterations, repeat=1)
        )
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: profiler.step())
        usage = {}  # this process's CPU time and page faults over the timed iterations

        @trainer.on(Events.ITERATION_COMPLETED)
        def _usage(engine):
            if engine.state.iteration in (warmup, total):
                usage[engine.state.iteration] = resource.getrusage(resource.RUSAGE_SELF)

        with profiler:
            trainer.run()

    events = profiler.key_averages()
    ranges = {e.key: e.cpu_time_total / 1000 / iterations for e in events if e.key in RANGES}
    ops = sorted((e for e in events if e.key not in RANGES and not e.key.startswith("ProfilerStep")),
                 key=lambda e: e.self_cpu_time_total, reverse=True)[:top]  # fmt: skip
    handlers = sum(timer.event_handlers_times[ev] for ev in (Events.ITERATION_STARTED,
                   Events.ITERATION_COMPLETED, Events.GET_BATCH_STARTED, Events.GET_BATCH_COMPLETED))  # fmt: skip
    return {
        "configs": list([configs] if isinstance(configs, str) else configs),
        "overrides": {k: v for k, v in overrides.items()},
        "torch_threads": torch.get_num_threads(),
        "num_workers": parser.get_parsed_content("runtime#num_workers"),
        "iterations_timed": iterations,
        "setup_seconds": setup_seconds,
        "cpu_seconds_per_iteration": (usage[total].ru_utime + usage[total].ru_stime - usage[warmup].ru_utime
                                      - usage[warmup].ru_stime) / iterations,
        "minor_page_faults_per_iteration": (usage[total].ru_minflt - usage[warmup].ru_minflt) / iterations,
        "iteration_ms": _median_ms(timer.dataflow_times + timer.processing_times + handlers, warmup),
        # G updates every gan#generator_interval iterations: the median is one kind of iteration, the mean both
        "iteration_mean_ms": _mean_ms(timer.dataflow_times + timer.processing_times + handlers, warmup),
        "labelled_batch_ms": _median_ms(timer.dataflow_times, warmup),
        "process_ms": _median_ms(timer.processing_times, warmup),
        "handlers_ms": _median_ms(handlers, warmup),
        "ranges_ms": ranges,
        "validation_seconds": validation["end"] - validation["start"],
        "top_ops_self_ms": {e.key: e.self_cpu_time_total / 1000 / iterations for e in ops},
    }


def report(result: dict) -> str:
    """Markdown table of one ``profile`` result."""
    lines = [
        f"`{' + '.join(result['configs'])}` {result['overrides'] or ''}: {result['torch_threads']} torch threads, "
        f"{result['num_workers']} workers, median over {result['iterations_timed']} iterations",
        "",
        "| part | ms / iteration |",
        "|---|---|",
        f"| **whole iteration** | **{result['iteration_ms']:.0f}** |",
        f"| whole iteration (mean) | {result['iteration_mean_ms']:.0f} |",
        f"| waiting for the labelled batch | {result['labelled_batch_ms']:.0f} |",
        f"| process function | {result['process_ms']:.0f} |",
    ]
    lines += [f"| &nbsp;&nbsp;{name} (mean) | {result['ranges_ms'][name]:.0f} |" for name in RANGES
              if name in result["ranges_ms"]]  # fmt: skip
    lines += [
        f"| event handlers | {result['handlers_ms']:.0f} |",
        "",
        f"CPU time of the training process: {result['cpu_seconds_per_iteration']:.2f} s per iteration; "
        f"{result['minor_page_faults_per_iteration']:.0f} minor page faults per iteration.",
        "",
        f"One validation: {result['validation_seconds']:.1f} s. Building trainer and datasets (caching): "
        f"{result['setup_seconds']:.1f} s.",
        "",
        "| operator (self CPU) | ms / iteration |",
        "|---|---|",
    ]
    lines += [f"| `{k}` | {v:.0f} |" for k, v in result["top_ops_self_ms"].items()]
    return "\n".join(lines)


def run(configs=("configs/train.yaml",), iterations: int = 20, warmup: int = 5, out: str | None = None, **overrides):
    """Profile ``configs`` and print the breakdown; with ``out``, also append the result to that JSON list."""
    result = profile(configs, iterations=iterations, warmup=warmup, **overrides)
    print(report(result))
    if out:
        path = Path(out)
        results = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(results + [result], indent=1))
    return None


if __name__ == "__main__":
    fire.Fire({"run": run})
