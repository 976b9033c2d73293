"""Generators of the bundle: the MRI-GAN generator and the Standard-GAN baseline (docs/gan_training.md)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets import Generator
from torch import Tensor, nn

_ACT = ("leakyrelu", {"negative_slope": 0.2, "inplace": True})


class GTLayer(nn.Module):
    """Ground-truth layer (eq. 1, AdaIN form): ``R_sigma(c) * (h - mu(h)) / sigma(h) + R_mu(c)``.

    ``mu`` and ``sigma`` are per-sample, per-channel statistics over the spatial dims
    (biased variance, ``sigma = sqrt(var + eps)``). ``R_sigma`` and ``R_mu`` are Linear-ReLU-Linear MLPs on
    the tissue code, initialised to output 1 and 0, so at initialisation the layer is an instance norm.

    Args:
        num_features: channels of ``h``.
        code_dim: size of the tissue code ``c``.
        hidden: hidden width of the two MLPs.
        eps: added to the variance.
    """

    def __init__(self, num_features: int, code_dim: int, hidden: int = 64, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.r_sigma = nn.Sequential(nn.Linear(code_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_features))
        self.r_mu = nn.Sequential(nn.Linear(code_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_features))
        for mlp, bias in ((self.r_sigma, 1.0), (self.r_mu, 0.0)):
            nn.init.zeros_(mlp[-1].weight)
            nn.init.constant_(mlp[-1].bias, bias)

    def forward(self, h: Tensor, code: Tensor) -> Tensor:
        dims = tuple(range(2, h.ndim))
        h32 = h.float()  # statistics in float32: under float16 autocast the variance of large activations overflows
        mu = h32.mean(dim=dims, keepdim=True)
        sigma = torch.sqrt(h32.var(dim=dims, unbiased=False, keepdim=True) + self.eps)
        extra = (None,) * len(dims)
        out = self.r_sigma(code)[(..., *extra)] * (h32 - mu) / sigma + self.r_mu(code)[(..., *extra)]
        return out.to(h.dtype)


def tissue_onehot(label: Tensor, num_classes: int = 4) -> Tensor:
    """One-hot float map (B, K, *spatial) of an integer label map (B, 1, *spatial); labels outside 0..K-1
    (the ignore label 255) get an all-zero vector, so they count as no tissue."""
    classes = torch.arange(num_classes, device=label.device).view(1, num_classes, *([1] * (label.ndim - 2)))
    return (label.long() == classes).float()


def class_intensity_statistics(
    image: Tensor, weights: Tensor, group_size: int = 1
) -> tuple[Tensor, Tensor, Tensor]:
    """Per sample, class and channel: weighted mean and standard deviation (B, K, C) of ``image`` (B, C, *spatial)
    under the class weights (B, K, *spatial), and the class mass (B, K) in voxels. With ``group_size`` g, the
    statistics are pooled over each run of g consecutive samples (the patches of one volume) and given to each."""
    image, weights = image.float(), weights.float()
    mass = weights.sum(dim=tuple(range(2, weights.ndim)))
    first = torch.einsum("bk...,bc...->bkc", weights, image)
    second = torch.einsum("bk...,bc...->bkc", weights, image * image)
    if group_size > 1:
        if image.shape[0] % group_size:
            raise ValueError(f"{image.shape[0]} samples do not form groups of {group_size}")
        mass, first, second = (
            t.unflatten(0, (-1, group_size)).sum(1, keepdim=True).expand(-1, group_size, *t.shape[1:]).flatten(0, 1)
            for t in (mass, first, second)
        )
    norm = mass.clamp_min(1e-6)[..., None]
    mean, square = first / norm, second / norm
    return mean, torch.sqrt((square - mean * mean).clamp_min(0) + 1e-6), mass


def tissue_boundaries(label: Tensor, num_classes: int = 4) -> Tensor:
    """Tissue-boundary map of a label map by morphological gradient over the full 3x3x3 neighbourhood.

    A voxel is a boundary (1.0) when any of its 26 neighbours has a different label, i.e. where
    ``max_pool(label) != -max_pool(-label)``; borders use replicate padding, so the patch edge is no boundary.

    Args:
        label: integer labels (B, 1, D, H, W), or one-hot (B, num_classes, D, H, W), which is arg-maxed.
        num_classes: number of tissue classes K, used to recognise one-hot input.

    Returns:
        float tensor (B, 1, D, H, W) of zeros and ones.
    """
    if label.ndim != 5 or label.shape[1] not in (1, num_classes):
        raise ValueError(f"label must be (B, 1 or {num_classes}, D, H, W), got {tuple(label.shape)}")
    if label.shape[1] > 1:
        label = label.argmax(dim=1, keepdim=True)
    padded = F.pad(label.float(), (1,) * 6, mode="replicate")
    dilated = F.max_pool3d(padded, kernel_size=3, stride=1)
    eroded = -F.max_pool3d(-padded, kernel_size=3, stride=1)
    return (dilated != eroded).float()


def _encoder(in_channels: int, features: Sequence[int]) -> nn.ModuleList:
    """Conv blocks: one at full resolution, then one stride-2 block per further feature level."""
    blocks, prev = [], in_channels
    for i, f in enumerate(features):
        blocks.append(Convolution(3, prev, f, strides=1 if i == 0 else 2, act=_ACT, norm="instance"))
        prev = f
    return nn.ModuleList(blocks)


def _up(in_channels: int, out_channels: int, **kwargs) -> Convolution:
    """Transposed conv of kernel 2 and stride 2: exactly doubles every spatial size."""
    return Convolution(3, in_channels, out_channels, strides=2, kernel_size=2, padding=0, output_padding=0,
                       is_transposed=True, **kwargs)


class MRIGANGenerator(nn.Module):
    """MRI-GAN generator G(x_src, y, z): a synthetic MRI patch carrying the tissue layout of ``y``.

    An MRI encoder turns the source patch into deep features ``h``; a tissue encoder turns the one-hot map
    ``y`` into multi-scale spatial features (decoder skips) and a code ``c`` (global pool + Linear, with
    ``noise_dim`` noise values appended). GT-Layers modulate ``h`` with ``c`` at the bottleneck and after
    every decoder block. A boundary head predicts tissue-boundary logits from the full-resolution tissue
    features; their sigmoid joins the last decoder concatenation. Output: ``tanh``, same shape as the source.

    Args:
        in_channels: number of MRI modalities C.
        num_classes: number of tissue classes K of the one-hot map.
        features: channels per resolution level; ``len(features) - 1`` downsamplings, so patch sizes must
            be divisible by ``2 ** (len(features) - 1)``.
        code_dim: size of the learned tissue code.
        noise_dim: size of the noise appended to the code (0: deterministic generator).
        source_code_dim: size of an appearance code of the source MRI appended to the code (0: none, the paper's
            generator): a Linear map of the per-channel mean and standard deviation of the source's deepest
            features. The GT-Layers normalise away the source features' own statistics, so without it the source's
            contrast can reach the output only through its normalised spatial pattern, which belongs to another
            place, or subject, than the tissue map.
        source_statistics: condition on the source subject's class-wise intensity statistics: ``forward`` then takes
            ``source_stats``, the mean and standard deviation of every channel per tissue (``class_intensity_statistics``
            under the segmenter's probabilities, pooled over the subject's patches), which join the code; the output
            is ``tanh(residual + atanh(base))``, where ``base`` paints each tissue of ``y`` with the source's mean
            intensity of that tissue. The source's contrast then reaches the fake directly; the network learns the
            texture, partial volume and bias around it.
        gt_hidden: hidden width of the GT-Layer MLPs.
    """

    conditional = True  # takes (source MRI, tissue map, noise); the trainer reads this

    def __init__(
        self,
        in_channels: int,
        num_classes: int = 4,
        features: Sequence[int] = (16, 32, 64),
        code_dim: int = 16,
        noise_dim: int = 0,
        gt_hidden: int = 64,
        source_code_dim: int = 0,
        source_statistics: bool = False,
    ):
        super().__init__()
        features = tuple(int(f) for f in features)
        if len(features) < 2:
            raise ValueError("features needs at least two levels")
        self.features, self.noise_dim, self.source_statistics = features, noise_dim, bool(source_statistics)
        full_code = code_dim + noise_dim + source_code_dim + (2 * num_classes * in_channels if source_statistics else 0)
        self.mri_encoder = _encoder(in_channels, features)
        self.tissue_encoder = _encoder(num_classes, features)
        self.code_fc = nn.Linear(features[-1], code_dim)
        self.source_fc = nn.Linear(2 * features[-1], source_code_dim) if source_code_dim > 0 else None
        self.gt_bottleneck = GTLayer(features[-1], full_code, gt_hidden)
        self.boundary_net = nn.Sequential(
            Convolution(3, features[0], features[0], act=_ACT, norm="instance"),
            Convolution(3, features[0], 1, kernel_size=1, conv_only=True),
        )
        self.ups, self.fuses, self.gts = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for level in range(len(features) - 1, 0, -1):
            f_out = features[level - 1]
            self.ups.append(_up(features[level], f_out, act=_ACT, norm="instance"))
            extra = 1 if level == 1 else 0  # the boundary map joins at full resolution
            self.fuses.append(Convolution(3, 2 * f_out + extra, f_out, conv_only=True))
            self.gts.append(GTLayer(f_out, full_code, gt_hidden))
        self.act = nn.LeakyReLU(0.2)
        self.final = Convolution(3, features[0], in_channels, kernel_size=1, conv_only=True)

    def forward(
        self, mri: Tensor, label_onehot: Tensor, noise: Tensor | None = None, source_stats: tuple | None = None
    ) -> tuple[Tensor, Tensor]:
        """Returns ``(fake, boundary_logits)``: fake (B, C, *spatial) in (-1, 1), logits (B, 1, *spatial).
        ``source_stats``: ``(mean, std)``, (B, K, C) each, of the source's tissues, needed with ``source_statistics``."""
        factor = 2 ** (len(self.features) - 1)
        if any(s % factor for s in mri.shape[2:]) or mri.shape[2:] != label_onehot.shape[2:]:
            raise ValueError(
                f"mri {tuple(mri.shape)} and label {tuple(label_onehot.shape)} need equal spatial sizes "
                f"divisible by {factor}"
            )
        h = mri
        for block in self.mri_encoder:
            h = block(h)
        skips, t = [], label_onehot.float()
        for block in self.tissue_encoder:
            t = block(t)
            skips.append(t)
        code = self.code_fc(t.mean(dim=(2, 3, 4)))
        if self.noise_dim > 0:
            if noise is None:
                noise = torch.randn(code.shape[0], self.noise_dim, device=code.device, dtype=code.dtype)
            code = torch.cat([code, noise], dim=1)
        base = None
        if self.source_statistics:
            if source_stats is None or source_stats[0].shape[1:] != (label_onehot.shape[1], mri.shape[1]):
                raise ValueError("a generator with source_statistics needs source_stats: (mean, std), (B, K, C) each")
            mean, std = (t.float() for t in source_stats)
            code = torch.cat([code, mean.flatten(1).to(code.dtype), std.flatten(1).to(code.dtype)], dim=1)
            base = torch.einsum("bk...,bkc->bc...", label_onehot.float(), mean)
        if self.source_fc is not None:
            h32 = h.float()
            statistics = torch.cat([h32.mean(dim=(2, 3, 4)), h32.std(dim=(2, 3, 4))], dim=1)
            code = torch.cat([code, self.source_fc(statistics).to(code.dtype)], dim=1)
        boundary_logits = self.boundary_net(skips[0])
        x = self.act(self.gt_bottleneck(h, code))
        for i, (up, fuse, gt) in enumerate(zip(self.ups, self.fuses, self.gts)):
            skip = skips[len(skips) - 2 - i]
            parts = [up(x), skip]
            if i == len(self.ups) - 1:
                parts.append(torch.sigmoid(boundary_logits))
            x = self.act(gt(fuse(torch.cat(parts, dim=1)), code))
        out = self.final(x)
        if base is not None:
            out = out.float() + torch.atanh(base.clamp(-0.99, 0.99))
        return torch.tanh(out), boundary_logits


class StandardGANGenerator(Generator):
    """Standard-GAN baseline generator (Mondal et al. 2018): noise -> Linear + ReLU -> 3 transposed convs -> tanh.

    MONAI's ``Generator`` (transposed convs of kernel 3 and stride 2; batch norm + ReLU after the first two, none after
    the last) with what it lacks here: a ReLU after its linear layer, an output in (-1, 1) (tanh), sizes given as
    a patch size, and the bundle's generator interface (``conditional``, ``noise_dim``).

    Args:
        out_channels: number of MRI modalities C.
        patch_size: output spatial size; every dim divisible by 8.
        noise_dim: size of the input noise vector.
        features: channels after the Linear layer and after the first two transposed convs.
    """

    conditional = False  # takes noise only

    def __init__(
        self,
        out_channels: int,
        patch_size: Sequence[int] = (32, 32, 32),
        noise_dim: int = 200,
        features: Sequence[int] = (128, 64, 32),
    ):
        patch_size = tuple(int(p) for p in patch_size)
        if len(patch_size) != 3 or any(p % 8 or p <= 0 for p in patch_size):
            raise ValueError(f"patch_size must be 3 positive sizes divisible by 8, got {patch_size}")
        f0, f1, f2 = (int(f) for f in features)
        super().__init__(
            latent_shape=(int(noise_dim),), start_shape=(f0, *(p // 8 for p in patch_size)),
            channels=(f1, f2, int(out_channels)), strides=(2, 2, 2), kernel_size=3, num_res_units=0,
            act="relu", norm="batch",
        )  # fmt: skip
        self.patch_size, self.noise_dim = patch_size, int(noise_dim)

    def forward(self, z: Tensor) -> Tensor:
        """Maps noise (B, noise_dim) to a patch (B, out_channels, *patch_size) in (-1, 1)."""
        x = torch.relu(self.linear(self.flatten(z)))
        return torch.tanh(self.conv(self.reshape(x)))
