"""Benchmark (not a test): peak memory of segmenting a 512x512x200 two-modality volume with configs/inference.yaml.

Run from the repository root::

    python -m tools.benchmark_memory run    # both cases below; writes bundle/docs/benchmarks/memory_cpu.{md,json}
    python -m tools.benchmark_memory run --settings "{'window 128': {'roi_size': [160, 192, 128]}}"

Each case writes an int16 T1+T2 phantom head (``scripts.data.phantom``) of 512x512x200 voxels with the case's spacing,
then runs the user's command, ``python -m monai.bundle run inference --config_file configs/inference.yaml``, in a
subprocess with the default network (random weights: memory and time do not depend on them), once per setting (a
set of config overrides). The peak resident set size of that subprocess comes from ``os.wait4`` (the kernel's
``ru_maxrss`` of that child alone), so it counts everything the user would see: Python, PyTorch and MONAI, loading,
preprocessing, the sliding window, the inversion to the input grid and saving. The saved label map must have the
input's shape and affine.

Cases (the pipeline resamples to 1 mm and crops to the head before the network, so memory follows the voxel count
at 1 mm inside the head's bounding box):

- ``0.5x0.5x1.0 mm``: a realistic high-resolution scan, a 256x256x200 mm field of view around the head; the
  network sees at most 256x256x200 voxels, and ``Invertd`` resamples the 4 class probabilities back up to
  512x512x200.
- ``1.0 mm isotropic``: the worst case for the network and the stitching buffer: a 512x512x200 mm field of view
  that the phantom head fills, so resampling and cropping remove almost nothing and all ~52 M voxels go through the
  sliding window (as in any real 1 mm scan of that size: its background noise defeats the crop to the head). Coarser
  spacings would make the 1 mm grid larger than the input, but no head scan of 512x512 voxels spans over 51 cm.

``device="cuda"`` runs the same on the GPU (windows on the GPU, the stitching buffer on the CPU through
``stitch_device: cpu``) and also reports the peak GPU memory PyTorch allocated.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fire

from scripts.atomic import write_json, write_text
from tools import BUNDLE_ROOT, subprocess_env

SHAPE = (512, 512, 200)
CASES = {"0.5x0.5x1.0 mm": (0.5, 0.5, 1.0), "1.0 mm isotropic": (1.0, 1.0, 1.0)}
SHIPPED = "configs/inference.yaml as shipped"
LIMIT_MIB = 4096
OUTPUT = str(BUNDLE_ROOT / "docs" / "benchmarks" / "memory_cpu")
_GPU_PEAK = "peak GPU MiB:"


def write_volume(folder: Path, spacing, seed: int = 0, shape=SHAPE):
    """Write ``case_T1.nii.gz`` and ``case_T2.nii.gz`` (int16, RAS affine with ``spacing``) into ``folder``;
    return the affine."""
    import nibabel as nib
    import numpy as np

    from scripts.data.phantom import make_subject

    subject = make_subject(shape=tuple(shape), preset="infant", seed=seed, spacing=tuple(spacing))
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -np.asarray(spacing) * (np.asarray(shape) - 1) / 2  # the head's centre at the origin
    for name, image in subject["images"].items():
        data = np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.int16)
        nib.save(nib.Nifti1Image(data, affine), str(folder / f"case_{name.upper()}.nii.gz"))
    return affine


def measure_inference(data_dir: Path, output_dir: Path, ckpt_path: Path, overrides=None, threads: int = 2,
                      device: str = "cpu") -> dict:  # fmt: skip
    """Run the bundle's inference command on ``data_dir`` in a subprocess with config ``overrides`` (``{id: value}``);
    return its wall time (s), peak resident set size (MiB) and, on ``cuda``, peak GPU memory (MiB)."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.yaml",
           "--dataset_dir", str(data_dir), "--dataset_format", "folder", "--output_dir", str(output_dir),
           "--ckpt_path", str(ckpt_path), "--device", f"$torch.device('{device}')"]  # fmt: skip
    if device == "cpu":
        cmd += ["--amp", "false"]
    else:  # run the workflow, then print the peak GPU memory
        print_peak = f"$print('{_GPU_PEAK}', torch.cuda.max_memory_allocated() / 2**20)"
        cmd += ["--inference", json.dumps(["@run", print_peak])]
    for key, value in (overrides or {}).items():
        cmd += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    env = subprocess_env(OMP_NUM_THREADS=str(threads))
    log_path = output_dir.parent / f"{output_dir.name}.log"
    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=BUNDLE_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log_path.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"inference on {data_dir} failed with exit code {proc.returncode}:\n{text[-3000:]}")
    scale = 1024 if sys.platform != "darwin" else 2**20  # ru_maxrss: KiB on Linux, bytes on macOS
    result = {"seconds": round(seconds, 1), "peak_rss_mib": round(usage.ru_maxrss / scale)}
    gpu = re.search(rf"{_GPU_PEAK} ([0-9.]+)", text)
    if gpu:
        result["peak_gpu_mib"] = round(float(gpu.group(1)))
    return result


def check_output(seg_path: Path, affine, shape=SHAPE) -> None:
    """Raise ``ValueError`` unless the label map at ``seg_path`` has ``shape``, ``affine`` and labels 0..3."""
    import nibabel as nib
    import numpy as np

    seg = nib.load(str(seg_path))
    if seg.shape != tuple(shape):
        raise ValueError(f"{seg_path}: shape {seg.shape}, expected the input's {tuple(shape)}")
    if not np.allclose(seg.affine, affine, atol=1e-4):
        raise ValueError(f"{seg_path}: affine\n{seg.affine}\ndiffers from the input's\n{affine}")
    labels = np.unique(np.asarray(seg.dataobj))
    if not set(labels.tolist()) <= {0, 1, 2, 3}:
        raise ValueError(f"{seg_path}: labels {labels.tolist()}, expected a subset of 0..3")


def run(cases=tuple(CASES), settings=None, threads: int = 2, device: str = "cpu", seed: int = 0,
        output: str | None = OUTPUT) -> None:  # fmt: skip
    """Measure peak memory and wall time of inference for each case in ``cases`` (keys of ``CASES``) and setting.

    ``settings``: ``{name: {config id: value}}``, overrides as on the command line (e.g. ``{"window 128":
    {"roi_size": [160, 192, 128]}}``); the shipped config is always measured first. ``threads`` sets
    ``OMP_NUM_THREADS`` of the inference run; ``device``: ``cpu`` or ``cuda``. Results go to ``<output>.json`` and
    ``<output>.md`` (``None``: print only).
    """
    import torch

    from scripts.networks import Segmenter

    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise ValueError(f"unknown cases {unknown}; choose from {list(CASES)}")
    settings = {SHIPPED: {}, **(settings or {})}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt_path = tmp / "model.pt"
        torch.save(Segmenter(in_channels=2, out_channels=4).state_dict(), ckpt_path)
        for i, case in enumerate(cases):
            data_dir = tmp / f"data{i}"
            data_dir.mkdir()
            affine = write_volume(data_dir, CASES[case], seed=seed)
            for j, (name, overrides) in enumerate(settings.items()):
                out_dir = tmp / f"out{i}-{j}"
                result = {"case": case, "setting": name, "overrides": overrides, "shape": list(SHAPE),
                          "spacing_mm": list(CASES[case])}  # fmt: skip
                result.update(measure_inference(data_dir, out_dir, ckpt_path, overrides, threads, device))
                check_output(out_dir / "case_seg.nii.gz", affine)
                result["output_on_input_grid"] = True
                results.append(result)
                print(json.dumps(result), flush=True)
    report = {
        "command": "python -m monai.bundle run inference --config_file configs/inference.yaml (random default network)",
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "omp_num_threads": int(threads),
        "limit_mib": LIMIT_MIB,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "versions": _versions(),
        "results": results,
    }
    text = markdown(report)
    print(text)
    if output:
        write_json(f"{output}.json", report)
        write_text(f"{output}.md", text)


def markdown(report: dict) -> str:
    """The report as a markdown table."""
    gpu = any("peak_gpu_mib" in r for r in report["results"])
    lines = [
        f"# Peak memory of inference on a 512x512x200 volume ({report['device']})",
        "",
        "Written by `python -m tools.benchmark_memory run` (from the repository root): a T1+T2 int16 phantom head of",
        "512x512x200 voxels, segmented with",
        "`python -m monai.bundle run inference --config_file configs/inference.yaml` on",
        f"{report['device']} with the default network (random weights), OMP_NUM_THREADS={report['omp_num_threads']};",
        f"{report['machine']}; {report['versions']}.",
        "Peak RSS is the whole inference process's maximum resident set size (`ru_maxrss`), Python, PyTorch and MONAI",
        "included; the time includes start-up, loading, preprocessing, the sliding window, inverting to the input grid",
        "and saving, and varies with the machine's load. Each output label map was checked to have the input's shape",
        "and affine.",
        "",
        "| case | spacing (mm) | field of view (mm) | setting | peak RSS (MiB) | within 4 GiB | wall time (s) |"
        + (" peak GPU (MiB) |" if gpu else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if gpu else ""),
    ]
    for r in report["results"]:
        fov = "x".join(f"{n * s:g}" for n, s in zip(r["shape"], r["spacing_mm"]))
        spacing = "x".join(f"{s:g}" for s in r["spacing_mm"])
        within = "yes" if r["peak_rss_mib"] <= report["limit_mib"] else "**no**"
        row = f"| {r['case']} | {spacing} | {fov} | {r['setting']} | {r['peak_rss_mib']} | {within} | {r['seconds']} |"
        lines.append(row + (f" {r.get('peak_gpu_mib', '-')} |" if gpu else ""))
    lines += ["", "Settings (config overrides, as on the command line):", ""]
    for name, overrides in dict((r["setting"], r["overrides"]) for r in report["results"]).items():
        shown = " ".join(f"`--{k} {v if isinstance(v, str) else json.dumps(v)}`" for k, v in overrides.items())
        lines.append(f"- {name}: {shown or 'none'}")
    return "\n".join(lines) + "\n"


def _versions() -> str:
    import monai
    import torch

    return f"torch {torch.__version__}, monai {monai.__version__}, Python {platform.python_version()}"


if __name__ == "__main__":
    fire.Fire({"run": run})
