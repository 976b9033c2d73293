"""ONNX export and ONNX Runtime inference for the segmenter.

``OnnxSegmenter`` is the ``Segmenter`` (same weights, same outputs) with a forward that ``torch.onnx.export``
can trace with dynamic spatial axes; ``OnnxRuntimeNetwork`` runs the exported file in place of the PyTorch
network, so ``configs/inference_onnx.yaml`` reuses the inference workflow's pre- and post-processing unchanged.

Export (from the bundle root; ``models/model.pt`` is a plain state_dict, so no ``--key_in_ckpt``)::

    python -m monai.bundle onnx_export network_def --filepath models/model.onnx --ckpt_file models/model.pt \\
        --meta_file configs/metadata.json --config_file "['configs/inference.yaml','configs/inference_onnx.yaml']" \\
        --input_shape "[1, 2, 32, 32, 32]" --use_trace True \\
        --converter_kwargs "{'input_names': ['image'], 'output_names': ['pred'], 'external_data': False, 'dynamic_axes':
            {'image': {0: 'batch', 2: 'x', 3: 'y', 4: 'z'}, 'pred': {0: 'batch', 2: 'x', 3: 'y', 4: 'z'}}}"
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .networks import Segmenter


class OnnxSegmenter(Segmenter):
    """``Segmenter`` whose decoder pads without a shape-dependent branch, for export with dynamic spatial axes.

    MONAI's ``UpCat`` pads the upsampled features by one voxel (replicate) along each axis where the encoder
    features are one voxel longer (odd sizes), behind an ``if`` on the shapes. ``torch.export`` resolves that
    ``if`` for the example input's shape, so an ONNX graph exported from ``Segmenter`` only accepts sizes that
    are multiples of 8. Here the pad width is computed from the shapes (0 or 1 voxel) and always applied, which
    is the same computation and exports as one dynamic ``Pad``: the graph accepts any batch and spatial size and
    gives ``Segmenter``'s outputs. The parameters and their names are ``Segmenter``'s, so its checkpoints load.
    """

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        skips = [self.stem(x.contiguous(memory_format=torch.channels_last_3d))]
        for down in self.down:
            skips.append(down(skips[-1]))
        bottleneck = skips.pop()
        h = bottleneck
        for up in self.up:
            x_e = skips.pop()
            x_0 = up.upsample(h)
            if up.is_pad:
                pad: list[int] = []
                for i in range(x_0.dim() - 2):  # F.pad lists the last axis first: (left, right) per axis
                    pad += [0, x_e.shape[-i - 1] - x_0.shape[-i - 1]]
                x_0 = F.pad(x_0, pad, mode="replicate")
            h = up.convs(torch.cat([x_e, x_0], dim=1))
        return self.head(h), {"bottleneck": bottleneck, "last": h}


class OnnxRuntimeNetwork(nn.Module):
    """Run an ONNX model with ONNX Runtime as a ``torch.nn.Module`` (one tensor in, the first output out).

    Args:
        path: the ``.onnx`` file.
        providers: ONNX Runtime execution providers; by default CUDA when both ONNX Runtime and PyTorch see a GPU,
            then the CPU.
        num_threads: intra-op threads for the CPU provider; ``None`` uses PyTorch's thread count (so
            ``OMP_NUM_THREADS`` and ``torch.set_num_threads`` apply to both backends), 0 ONNX Runtime's default.

    Inputs are sent as float32 arrays; outputs come back as float32 tensors on the input's device.
    """

    def __init__(self, path: str, providers: Sequence[str] | None = None, num_threads: int | None = None):
        super().__init__()
        import onnxruntime as ort  # optional dependency: pip install -e ".[export]"

        if providers is None:
            providers = ["CPUExecutionProvider"]
            if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads() if num_threads is None else int(num_threads)
        self.path = str(path)
        self.session = ort.InferenceSession(self.path, sess_options=options, providers=list(providers))
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(torch.as_tensor(x).detach().to("cpu", torch.float32).numpy())
        (out,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(out).to(x.device)

    def extra_repr(self) -> str:
        return f"path={self.path!r}, providers={self.session.get_providers()}"
