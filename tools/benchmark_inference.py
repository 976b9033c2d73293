"""Benchmark (not a test): wall time and peak memory to segment one brain volume with configs/inference.yaml.

Run from the repository root::

    python -m tools.benchmark_inference run                       # 144x192x256 T1+T2 phantom, CPU (+ GPU if any)
    python -m tools.benchmark_inference run --shape "[512,512,200]" --ckpt_path bundle/models/model.pt
    python -m tools.benchmark_inference run --head true --shape "[256,256,256]" --ckpt_path bundle/models/model_t1.pt

``--head true``: a whole-head T1 of a held-out real label map (``scripts.data.anatomy``, test map 16, adult contrast
in noisy air) padded with air to ``shape``, segmented by the T1 weights without a mask.

Each device is measured in a fresh subprocess so that its peak resident memory (``ru_maxrss``) belongs to that
run alone. The timed part is the inference workflow's ``run()``: loading the NIfTI files, preprocessing,
sliding-window inference, inverting to the input grid and saving the label map. The first volume is a warm-up;
the median of the following ones is reported. Weights do not change the timing, so without ``ckpt_path`` a
randomly initialised default network is used.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fire

from tools import BUNDLE_ROOT, subprocess_env


def _write_volume(folder: Path, shape: tuple[int, ...], seed: int) -> None:
    import nibabel as nib
    import numpy as np

    from scripts.data.phantom import make_subject

    subject = make_subject(shape=tuple(shape), preset="infant", seed=seed)
    for name, image in subject["images"].items():
        nib.save(nib.Nifti1Image(image.astype(np.int16), np.eye(4)), str(folder / f"bench_{name.upper()}.nii.gz"))


def _write_head(folder: Path, shape: tuple[int, ...]) -> None:
    import nibabel as nib
    import numpy as np
    from monai.transforms import ResizeWithPadOrCrop

    from scripts.data.anatomy import TEST_MAPS, fixed_render, map_path, read_label_map, render_subject

    labels = ResizeWithPadOrCrop(tuple(shape))(read_label_map(map_path(TEST_MAPS[-1])))
    head = render_subject(labels, fixed_render("whole_head", ["t1"]), strip=False, seed=0)["image"][0]
    air = np.random.default_rng(0).rayleigh(0.03, tuple(shape)).astype(np.float32)  # the crop's margin: noisy air
    air[tuple(slice((n - m) // 2, (n - m) // 2 + m) for n, m in zip(shape, head.shape))] = head
    nib.save(nib.Nifti1Image(air, np.eye(4)), str(folder / "bench_T1.nii.gz"))


def measure(data_dir: str, output_dir: str, ckpt_path: str, device: str, repeats: int = 3, roi_size=None,
            modalities=("t1", "t2"), one_window: bool = True) -> dict:
    """Run the inference workflow ``repeats + 1`` times on ``data_dir`` in this process; return timings and memory."""
    import torch
    from monai.bundle import ConfigWorkflow

    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workflow = ConfigWorkflow(
        config_file=str(BUNDLE_ROOT / "configs/inference.yaml"),
        meta_file=str(BUNDLE_ROOT / "configs/metadata.json"),
        workflow_type="infer",
        bundle_root=str(BUNDLE_ROOT),
        dataset_dir=data_dir,
        dataset_format="folder",
        output_dir=output_dir,
        ckpt_path=ckpt_path,
        modalities=list(modalities),
        device=f"$torch.device('{device}')",
        amp=False,
        overwrite=True,  # the repeats write the same outputs into this temporary folder
        **({"roi_size": list(roi_size)} if roi_size else {}),
        **({} if one_window else {"one_window_voxels": None}),
    )
    workflow.initialize()
    times = []
    for _ in range(repeats + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        workflow.run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    result = {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)",
        "seconds_median": statistics.median(times[1:]),
        "seconds_all": times,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_imports_mb": baseline_rss,
    }
    if device.startswith("cuda"):
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    workflow.finalize()
    return result


def run(shape=(144, 192, 256), ckpt_path: str | None = None, repeats: int = 3, seed: int = 0, roi_size=None,
        head: bool = False, one_window: bool = True) -> list[dict]:
    """Benchmark inference on a phantom T1+T2 volume of ``shape`` (``head``: a real whole-head T1) on the CPU and,
    when present, the GPU.

    ``roi_size`` overrides the inference window (default: configs/inference.yaml's); smaller windows use less
    memory and more time. ``--one_window False`` tiles every image with that window, as before release 0.14.0 (by
    default an image of at most ``one_window_voxels`` is one window).
    """
    import torch

    from scripts.networks import Segmenter

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "data").mkdir()
        modalities = ["t1"] if head else ["t1", "t2"]
        if head:
            _write_head(tmp / "data", shape)
        else:
            _write_volume(tmp / "data", shape, seed)
        if not ckpt_path:
            ckpt_path = str(tmp / "random.pt")
            torch.save({"model": Segmenter(len(modalities), 4).state_dict()}, ckpt_path)
        devices = ["cpu"] + (["cuda:0"] if torch.cuda.is_available() else [])
        for device in devices:
            cmd = [sys.executable, "-m", "tools.benchmark_inference", "measure", str(tmp / "data"),
                   str(tmp / f"out-{device}"), ckpt_path, device, f"--repeats={repeats}",
                   f"--modalities={json.dumps(modalities)}"]  # fmt: skip
            if roi_size:
                cmd.append(f"--roi_size={list(roi_size)}")
            if not one_window:
                cmd.append("--one_window=False")
            proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, check=True)
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            window = list(roi_size) if roi_size else "config default"
            result.update(shape=list(shape), roi_size=window if one_window else f"{window}, tiled")
            results.append(result)
    print("| volume | window | device | seconds / volume (median) | peak RSS (MB) | peak GPU (MB) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        gpu = f"{r['peak_gpu_mb']:.0f}" if "peak_gpu_mb" in r else "-"
        shape_txt = "x".join(str(s) for s in r["shape"])
        print(f"| {shape_txt} | {r['roi_size']} | {r['device']} | {r['seconds_median']:.2f} | {r['peak_rss_mb']:.0f} | {gpu} |")
    return results


if __name__ == "__main__":
    fire.Fire({"run": run, "measure": lambda *a, **k: print(json.dumps(measure(*a, **k)))})
