"""Ignite trainer of the semi-supervised GAN whose discriminator is the segmenter (docs/gan_training.md)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import NamedTuple

import torch
import torch.distributed as dist
from ignite.metrics import Metric
from monai.data import MetaTensor
from monai.engines import Trainer
from monai.engines.utils import default_metric_cmp_fn, default_prepare_batch
from monai.transforms import Randomizable
from monai.utils import CommonKeys as Keys
from torch import nn
from torch.profiler import record_function

from ..checkpoint import unwrap
from ..data.datasets import GM, WM
from ..networks.generators import class_intensity_statistics, tissue_onehot

logger = logging.getLogger(__name__)


@contextmanager
def frozen(network: nn.Module):
    """Evaluation mode (batch norm uses its running statistics) and no weight gradients inside; restored after."""
    params = [(p, p.requires_grad) for p in network.parameters()]
    training = network.training
    try:
        network.eval()
        for p, _ in params:
            p.requires_grad_(False)
        yield network
    finally:
        network.train(training)
        for p, flag in params:
            p.requires_grad_(flag)


def random_warp(label: torch.Tensor, sigma: float, control_points: int = 4) -> torch.Tensor:
    """Warp integer label maps (B, 1, D, H, W) by a smooth random displacement, nearest-neighbour.

    The displacement (standard deviation ``sigma`` voxels per axis) is drawn on a ``control_points``^3 grid and
    interpolated trilinearly; samples outside the patch take the border label. MONAI's ``Rand3DElastic`` works on
    one unbatched image at a time on the CPU; this warps the batch on the training device.
    """
    b, _, *spatial = label.shape
    coarse = torch.randn(b, 3, *([control_points] * 3), device=label.device) * sigma
    shift = nn.functional.interpolate(coarse, size=spatial, mode="trilinear", align_corners=True)
    # grid_sample's grid is (x, y, z) = (W, H, D) in [-1, 1]: voxels -> normalised units, axes reversed
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in reversed(spatial)], device=label.device)
    identity = torch.eye(3, 4, device=label.device).expand(b, 3, 4)
    grid = nn.functional.affine_grid(identity, [b, 1, *spatial], align_corners=True)
    grid = grid + shift.flip(1).permute(0, 2, 3, 4, 1) * scale
    warped = nn.functional.grid_sample(label.float(), grid, mode="nearest", padding_mode="border", align_corners=True)
    return warped.to(label.dtype)


def _plain(x: torch.Tensor) -> torch.Tensor:
    """``x`` without MONAI's per-item metadata: the trainer subsets, repeats and concatenates patches of different
    batches, which a batched ``MetaTensor`` refuses when its metadata lists no longer match the items (the output
    dict keeps the batch's own MetaTensors)."""
    return x.as_tensor() if isinstance(x, MetaTensor) else x


class Fakes(NamedTuple):
    """What the generator produced in one iteration."""

    image: torch.Tensor  # one fake per labelled patch
    target: torch.Tensor  # the tissue maps the fakes carry (Standard-GAN: the labels of the batch)
    boundary_logits: torch.Tensor | None  # MRI-GAN's boundary network on ``target``
    reconstruction: torch.Tensor | None  # G(x, y_x) of the labelled patches ``original``
    original: torch.Tensor | None
    stats: tuple | None  # the sources' class-wise statistics the fakes were rendered with (``source_statistics``)


class SemiSupervisedGanTrainer(Trainer):
    """Semi-supervised GAN training whose discriminator D is the segmenter (docs/gan_training.md).

    Training loop, per iteration:
        1. Draw a labelled batch from ``train_data_loader`` and an unlabelled batch from ``unlabeled_data_loader``
           (cycled independently).
        2. After ``generator_start`` iterations, generate one fake per labelled patch (``_generator_forward``): the
           MRI-GAN generator renders the labelled tissue maps, flipped and warped at random, in the appearance of
           the unlabelled patches; the Standard-GAN generator maps noise to patches.
        3. Update D (``_discriminator_step``): its labelled loss plus, weighted by ``gan_ramp``, the unlabelled term
           on the unlabelled patches and the fake-class and synthetic (tissue transfer) terms on generated patches.
           Batch norm's running statistics keep the real patches' pass only.
        4. Every ``generator_interval`` iterations, update G against D frozen in evaluation mode
           (``_generator_step``); in the others the fakes of step 2 are generated without gradients.
        5. A non-finite loss skips its step's update (D's running statistics included) in every process together,
           counted in ``engine.state.nonfinite_steps``; ``max_nonfinite`` consecutive iterations with a skipped
           update stop training with an error.

    Without a generator and unlabelled data this is supervised training of the segmenter. ``engine.state.output``
    is a one-item list (read by MONAI's ``from_engine(keys, first=True)``) of a dict holding the batch's images and
    labels, the fakes and their maps (``fake``, ``fake_label``), the labelled logits (``pred``), ``loss`` (D's total)
    and every loss term as ``loss_d_*``/``loss_g_*``.

    Args:
        network: the segmenter, D. Its ``forward_features`` gives the features for feature matching.
        generator: ``MRIGANGenerator``, ``StandardGANGenerator`` or ``None`` (supervised).
            Both networks may be wrapped in ``DistributedDataParallel`` (configs/multi_gpu_train.yaml).
        d_optimizer / g_optimizer: optimisers of D and G.
        d_loss_function: ``scripts.losses.DiscriminatorLoss``; g_loss_function: ``scripts.losses.GeneratorLoss``;
            both are moved to ``device``.
        feature_layer: key of ``forward_features`` matched by the generator (``"last"`` or ``"bottleneck"``).
        warmup_iterations: iterations before the discriminator's unlabelled, fake and synthetic terms start.
        rampup_iterations: iterations over which those terms then grow linearly to their full weight.
        generator_start: iterations before the generator starts (it neither generates nor trains before): set to
            ``warmup_iterations``, the warm-up is supervised training of D alone, at a third of the cost.
        generator_interval: G updates every this many iterations; in the others it only renders the fakes D learns
            from, without gradients (the generator step is half of an MRI-GAN iteration's time; docs/speed.md).
        flip_maps: flip each generating tissue map left-right with probability 0.5 (MRI-GAN).
        deform_maps: standard deviation (voxels) of the smooth random displacement that warps each generating map.
        fake_patches: fakes per iteration, rendered from that many of the labelled batch's maps drawn at random
            (``None``: one per labelled patch). Fewer fakes make D's synthetic pass and G's step cheaper.
        reconstruction_patches: labelled patches per iteration that G reconstructs from themselves for its
            reconstruction term, drawn at random (``None``: all of them).
        fake_transform: a MONAI dictionary transform (key ``image``) applied to each fake before D learns from it as
            labelled data (the synthetic term; ``gan#fake_augmentation``). The fakes paint each tissue with one
            intensity per subject, while the real patches carry their scan's bias field and the intensity
            augmentation; D then sees the GM/WM boundary cleaner in the fakes than in any real scan. Its random state
            is seeded from torch's generator. The patches D saw are in the output as ``synthetic``.
        fake_maps: the fake-class patches: ``"same"``, the fakes themselves (the paper), or ``"permuted"``, the maps
            rendered with their tissues exchanged (off-manifold fakes, MRI-GAN only).
        source_group_size: consecutive unlabelled patches cut from one subject (``samples_per_volume``), over which a
            ``source_statistics`` generator's class-wise statistics are pooled.
        source_classes: the tissue classes of the ``source_statistics``: ``"segmenter"``, the frozen segmenter's
            probabilities, or ``"clusters"``, the unlabelled batch's ``clusters`` map (``TissueClustersd``: k-means
            classes named by anatomy, right whatever the contrast order, where the segmenter reads its own bias).
        contrast_swap: probability that a fake is rendered with its source's GM and WM statistics exchanged
            (``source_statistics`` generators): infant WM turns from darker than GM to brighter within a year, so the
            segmenter must not tie a tissue to one side of that contrast.
        matching_target: the real patches the MRI-GAN generator's fakes are matched to, class by class (feature
            matching): ``"labelled"``, the labelled batch under its labels, or ``"unlabelled"``, the unlabelled batch
            under its ``clusters`` map (k-means classes). With 2 labelled infants, matching their features pulls
            fakes rendered in an adult's appearance towards infant contrast (docs/gan_training.md); the unlabelled
            batch is the fakes' own population, as in the paper's feature matching against unlabelled data.
        num_classes: tissue classes K.
        amp: mixed precision (CUDA), with one gradient scaler per network when the autocast dtype is float16 (in
            ``state_dict``, hence in last.pt).
        amp_kwargs: arguments of ``torch.autocast("cuda")``, e.g. ``{"dtype": torch.bfloat16}`` (train.yaml:
            ``amp_dtype``, which the validation evaluator gets too); autocast's default dtype is float16.
        Other arguments are those of ``monai.engines.Trainer``.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        d_optimizer: torch.optim.Optimizer,
        d_loss_function: nn.Module,
        generator: nn.Module | None = None,
        g_optimizer: torch.optim.Optimizer | None = None,
        g_loss_function: nn.Module | None = None,
        unlabeled_data_loader: Iterable | None = None,
        feature_layer: str = "last",
        warmup_iterations: int = 0,
        rampup_iterations: int = 0,
        generator_start: int = 0,
        generator_interval: int = 1,
        flip_maps: bool = True,
        fake_maps: str = "same",
        deform_maps: float = 0.0,
        fake_patches: int | None = None,
        reconstruction_patches: int | None = None,
        fake_transform: Callable | None = None,
        source_group_size: int = 1,
        source_classes: str = "segmenter",
        contrast_swap: float = 0.0,
        matching_target: str = "labelled",
        num_classes: int = 4,
        max_nonfinite: int = 20,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        key_train_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        amp_kwargs: dict | None = None,
    ):
        if generator is not None and (g_optimizer is None or g_loss_function is None):
            raise ValueError("a generator needs g_optimizer and g_loss_function")
        if generator is not None and getattr(unwrap(generator), "conditional", False) and unlabeled_data_loader is None:
            raise ValueError("the MRI-GAN generator needs unlabelled source patches: give unlabeled_data_loader")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            handlers=train_handlers,
            amp=amp,
            amp_kwargs=amp_kwargs,
            decollate=False,
        )
        self.network, self.generator = network, generator
        self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer
        # on the training device: their buffers (class weights) meet the logits there
        self.d_loss_function = d_loss_function.to(self.state.device)
        self.g_loss_function = None if g_loss_function is None else g_loss_function.to(self.state.device)
        self.unlabeled_data_loader = unlabeled_data_loader
        self._unlabeled_iter: Iterator | None = None
        self.feature_layer, self.num_classes, self.max_nonfinite = feature_layer, num_classes, max_nonfinite
        self.warmup_iterations, self.rampup_iterations = int(warmup_iterations), int(rampup_iterations)
        self.generator_start = int(generator_start)
        if int(generator_interval) < 1:
            raise ValueError(f"generator_interval must be at least 1, got {generator_interval}")
        self.generator_interval = int(generator_interval)
        self.flip_maps = bool(flip_maps)
        if fake_maps not in ("same", "permuted"):
            raise ValueError(f"fake_maps must be 'same' or 'permuted', got {fake_maps!r}")
        self.fake_maps = fake_maps
        self.deform_maps = float(deform_maps)
        if fake_patches is not None and int(fake_patches) < 1:
            raise ValueError(f"fake_patches must be at least 1 (or None: all), got {fake_patches}")
        self.fake_patches = None if fake_patches is None else int(fake_patches)
        self.reconstruction_patches = None if reconstruction_patches is None else int(reconstruction_patches)
        self.fake_transform = fake_transform
        if isinstance(fake_transform, Randomizable):
            fake_transform.set_random_state(seed=int(torch.randint(2**31 - 1, ()).item()))
        self.source_group_size = max(1, int(source_group_size))
        if source_classes not in ("segmenter", "clusters"):
            raise ValueError(f"source_classes must be 'segmenter' or 'clusters', got {source_classes!r}")
        self.source_classes = source_classes
        self.contrast_swap = float(contrast_swap)
        if matching_target not in ("labelled", "unlabelled"):
            raise ValueError(f"matching_target must be 'labelled' or 'unlabelled', got {matching_target!r}")
        self.matching_target = matching_target
        # float16's narrow range needs loss scaling; bfloat16 has float32's
        scale = amp and self.amp_kwargs.get("dtype", torch.float16) == torch.float16
        self.d_scaler = torch.amp.GradScaler("cuda", enabled=scale)
        self.g_scaler = torch.amp.GradScaler("cuda", enabled=scale)
        self.state.nonfinite_steps = 0
        self._consecutive_nonfinite = 0

    def state_dict(self) -> OrderedDict:
        """Ignite's engine state and the gradient scalers' (empty unless float16 mixed precision scales the losses)."""
        scalers = {"d_scaler": self.d_scaler.state_dict(), "g_scaler": self.g_scaler.state_dict()}
        return OrderedDict(super().state_dict(), **scalers)

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Ignite's ``load_state_dict``; also restores the scalers if saved by a run with float16 loss scaling."""
        super().load_state_dict(state_dict)
        for name in ("d_scaler", "g_scaler"):
            if state_dict.get(name):
                getattr(self, name).load_state_dict(state_dict[name])

    def _autocast(self):
        return torch.autocast("cuda", **self.amp_kwargs) if self.amp else nullcontext()

    def _next_unlabeled(self, engine: SemiSupervisedGanTrainer) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(image, clusters)`` of the next unlabelled batch, restarting the loader whenever it is exhausted;
        ``clusters`` is the batch's ``TissueClustersd`` map (``None`` without one), for ``_source_statistics``."""
        if self._unlabeled_iter is None:
            self._unlabeled_iter = iter(self.unlabeled_data_loader)
        try:
            batch = next(self._unlabeled_iter)
        except StopIteration:
            self._unlabeled_iter = iter(self.unlabeled_data_loader)
            batch = next(self._unlabeled_iter)
        clusters = _plain(batch["clusters"]).to(engine.state.device) if "clusters" in batch else None
        return _plain(engine.prepare_batch(batch, engine.state.device, engine.non_blocking)[0]), clusters

    def gan_ramp(self, iteration: int) -> float:
        """Weight factor of the unlabelled, fake and synthetic terms: 0 in the warm-up, then a linear ramp to 1."""
        if iteration <= self.warmup_iterations:
            return 0.0
        if self.rampup_iterations <= 0:
            return 1.0
        return min(1.0, (iteration - self.warmup_iterations) / self.rampup_iterations)

    def _target_maps(self, label: torch.Tensor) -> torch.Tensor:
        """The tissue maps the generator renders: the labelled maps, each flipped left-right with probability 0.5
        (``flip_maps``) and warped by a smooth random displacement (``deform_maps``)."""
        if self.flip_maps:
            flip = torch.rand(label.shape[0], device=label.device) < 0.5
            label = torch.where(flip.view(-1, *([1] * (label.ndim - 1))), label.flip(2), label)
        if self.deform_maps > 0:
            label = random_warp(label, self.deform_maps)
        return label

    def _generate(self, target: torch.Tensor, unlabeled: torch.Tensor | None, reconstruct=None, stats=None):
        """Fakes for this iteration (one per labelled patch), the boundary logits (MRI-GAN only) and the
        reconstructions: the MRI-GAN renders ``target`` in the appearance of the unlabelled patches (mixing subjects
        across the batch) and, in the same batched pass, ``reconstruct = (image, label)`` patches from themselves
        (``None``: no reconstructions). G's weights do not change before its step, so one pass serves both.
        ``stats``: ``_source_statistics`` of the ``target.shape[0]`` sources, needed by a ``source_statistics``
        generator."""
        g = unwrap(self.generator)
        if not g.conditional:
            noise = torch.randn(target.shape[0], g.noise_dim, device=target.device)
            return self.generator(noise), None, None
        n, sources, maps = target.shape[0], self._sources(unlabeled, target.shape[0]), target
        if g.source_statistics and stats is None:
            raise ValueError("a source_statistics generator needs the sources' statistics (_source_statistics)")
        stats = None if stats is None else stats[:2]
        if reconstruct is not None:
            sources, maps = torch.cat([sources, reconstruct[0]]), torch.cat([target, reconstruct[1]])
            if stats is not None:  # a labelled patch's own tissues are known, and all present in its map
                own = class_intensity_statistics(reconstruct[0], tissue_onehot(reconstruct[1], self.num_classes))
                stats = tuple(torch.cat(pair) for pair in zip(stats, own[:2]))
        out, boundary_logits = self.generator(sources, tissue_onehot(maps, self.num_classes), source_stats=stats)
        return out[:n], boundary_logits[:n], out[n:] if reconstruct is not None else None

    def _source_statistics(self, unlabeled: torch.Tensor, n: int, clusters=None) -> tuple[torch.Tensor, ...]:
        """``(mean, std, mass)`` of the tissues of the sources of ``n`` fakes (``source_statistics`` generators): the
        frozen segmenter's probabilities (or the unlabelled batch's ``clusters`` classes) weight the voxels, pooled
        over the ``source_group_size`` patches of each unlabelled subject, so that a tissue missing from one patch
        still gets its subject's intensity. With ``contrast_swap`` p, each fake's GM and WM statistics are exchanged
        with probability p."""
        if self.source_classes == "clusters":
            if clusters is None:
                raise KeyError("source_classes 'clusters' needs a 'clusters' map in the unlabelled batches "
                               "(TissueClustersd)")
            probs = tissue_onehot(clusters, self.num_classes)
        else:
            with frozen(self.network), torch.no_grad():
                probs = torch.softmax(unwrap(self.network)(unlabeled).float(), dim=1)
        group = self.source_group_size if unlabeled.shape[0] % self.source_group_size == 0 else 1
        stats = class_intensity_statistics(unlabeled, probs, group)
        index = torch.arange(n, device=unlabeled.device) % unlabeled.shape[0]  # as _sources
        stats = tuple(t[index] for t in stats)
        if self.contrast_swap > 0:
            swap = torch.rand(n, device=unlabeled.device) < self.contrast_swap
            order = torch.arange(self.num_classes, device=unlabeled.device)
            order[[GM, WM]] = order[[WM, GM]]
            stats = tuple(torch.where(swap.view(-1, *[1] * (t.ndim - 1)), t[:, order], t) for t in stats)
        return stats

    def _reconstruction_patches(self, image: torch.Tensor, label: torch.Tensor):
        """``(image, label)`` of the labelled patches G reconstructs this iteration (``reconstruction_patches`` of
        them, at random), or ``None`` when the reconstruction term is off."""
        if not self.g_loss_function.weights.get("reconstruction"):
            return None
        n = image.shape[0]
        k = n if self.reconstruction_patches is None else min(self.reconstruction_patches, n)
        if k <= 0:
            return None
        if k == n:
            return image, label
        pick = torch.randperm(n, device=image.device)[:k]
        return image[pick], label[pick]

    def _fake_class_patches(self, fake, target, unlabeled, stats=None):
        """Patches for the K+1-th class: the generator's fakes, or with ``fake_maps="permuted"`` renderings of the maps
        with their tissues exchanged (CSF drawn where WM is, ...): off the data manifold, where a K+1 discriminator
        learns from fakes (Dai et al. 2017), not on it, where rejecting them fights the labelled loss. ``stats``: the
        fakes' source statistics, which the permuted maps reuse."""
        if self.fake_maps != "permuted" or not unwrap(self.generator).conditional:
            return fake.detach()
        tissues = torch.stack([torch.randperm(self.num_classes - 1, device=target.device) + 1 for _ in target])
        lookup = torch.cat([torch.zeros_like(tissues[:, :1]), tissues], dim=1)  # background stays background
        index = target.long().clamp(0, self.num_classes - 1).flatten(1)
        permuted = torch.where(target.flatten(1) < self.num_classes, torch.gather(lookup, 1, index), target.flatten(1))
        with torch.no_grad(), self._autocast():
            return self._generate(permuted.view_as(target), unlabeled, stats=stats)[0]

    @staticmethod
    def _sources(unlabeled: torch.Tensor, n: int) -> torch.Tensor:
        """The unlabelled patch each of ``n`` fakes takes its appearance from."""
        return unlabeled[torch.arange(n, device=unlabeled.device) % unlabeled.shape[0]]

    def _finite(self, engine: SemiSupervisedGanTrainer, terms: dict[str, torch.Tensor], which: str) -> bool:
        """Whether the step's update is taken: its loss is finite in every process (``_finite_everywhere``)."""
        local = bool(torch.isfinite(terms["total"]))
        if self._finite_everywhere(local):
            return True
        engine.state.nonfinite_steps += 1
        if local:
            where = "in another process"
        else:
            bad = [f"{k} {v.item()}" for k, v in terms.items() if k != "total" and not torch.isfinite(v)]
            where = "(" + (", ".join(bad) or f"total {terms['total'].item()}") + ")"
        logger.warning(
            f"non-finite {which} loss {where} at iteration {engine.state.iteration}: update skipped "
            f"({engine.state.nonfinite_steps} skipped so far)"
        )
        return False

    def _finite_everywhere(self, finite: bool) -> bool:
        """``finite`` of this process and of all others (an all-reduce with MAX of the non-finite flag) when
        ``torch.distributed`` is initialised: every process skips the update together, as one that skipped its
        backward pass alone would leave the others waiting in DDP's gradient all-reduce."""
        if not (dist.is_available() and dist.is_initialized()):
            return finite
        flag = torch.tensor(0.0 if finite else 1.0, device=self.state.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return not flag.item()

    def _count_nonfinite(self, engine: SemiSupervisedGanTrainer, ok: bool) -> None:
        """Count consecutive iterations with a skipped update; ``max_nonfinite`` of them stop training."""
        self._consecutive_nonfinite = 0 if ok else self._consecutive_nonfinite + 1
        if self._consecutive_nonfinite >= self.max_nonfinite:
            raise RuntimeError(
                f"training diverged: {self._consecutive_nonfinite} consecutive iterations with a non-finite loss "
                f"(iteration {engine.state.iteration}); lower the learning rates or turn AMP off"
            )

    def _step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def _iteration(self, engine: SemiSupervisedGanTrainer, batchdata: dict[str, torch.Tensor]) -> list[dict]:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        image, label = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)[:2]
        output: dict = {Keys.IMAGE: image, Keys.LABEL: label}  # with their metadata, for handlers
        image, label = _plain(image), _plain(label)
        with record_function("unlabelled batch"):
            has_unlabeled = self.unlabeled_data_loader is not None
            unlabeled, clusters = self._next_unlabeled(engine) if has_unlabeled else (None, None)
        self.network.train()
        iteration = engine.state.iteration
        updating_g = iteration % self.generator_interval == 0
        fakes = None
        if self.generator is not None and iteration > self.generator_start:
            fakes = self._generator_forward(image, label, unlabeled, clusters, updating_g)
            output["fake"], output["fake_label"] = fakes.image.detach(), fakes.target

        d_ok = self._discriminator_step(engine, output, image, label, unlabeled, fakes)
        g_ok = True
        if fakes is not None and updating_g:
            with record_function("generator step"):
                g_ok = self._generator_step(engine, output, image, label, unlabeled, fakes, clusters)

        self._count_nonfinite(engine, d_ok and g_ok)
        engine.state.output = [output]
        return [output]

    def _generator_forward(self, image, label, unlabeled, clusters, updating_g: bool) -> Fakes:
        """This iteration's ``Fakes``, with gradients only in iterations that update G (``updating_g``), whose pass
        also reconstructs labelled patches for G's reconstruction term (``_reconstruction_patches``)."""
        self.generator.train()
        g = unwrap(self.generator)
        target = label
        if self.fake_patches is not None and self.fake_patches < label.shape[0]:
            target = label[torch.randperm(label.shape[0], device=label.device)[: self.fake_patches]]
        target = self._target_maps(target) if g.conditional else target
        reconstruct = self._reconstruction_patches(image, label) if g.conditional and updating_g else None
        stats = None
        if g.conditional and g.source_statistics:
            stats = self._source_statistics(unlabeled, target.shape[0], clusters)
        grad = nullcontext() if updating_g else torch.no_grad()
        with grad, self._autocast(), record_function("generator forward"):
            fake, boundary_logits, reconstruction = self._generate(target, unlabeled, reconstruct, stats)
        original = None if reconstruct is None else reconstruct[0]
        return Fakes(fake, target, boundary_logits, reconstruction, original, stats)

    def _discriminator_patches(self, ramp: float, unlabeled, fakes: Fakes | None):
        """``(unlabelled, synthetic, fake_class)``: the patches of D's GAN terms, ``None`` for a term that is off
        (weight 0, not ramped in yet, or no fakes)."""
        weights = self.d_loss_function.weights
        unlabelled = unlabeled if ramp > 0 and weights.get("unlabelled") else None
        if fakes is None or ramp <= 0:
            return unlabelled, None, None
        synthetic = self._augmented(fakes.image.detach()) if weights.get("synthetic") else None
        fake_class = None
        if weights.get("fake"):
            fake_class = self._fake_class_patches(fakes.image, fakes.target, unlabeled, fakes.stats)
        return unlabelled, synthetic, fake_class

    def _augmented(self, fakes: torch.Tensor) -> torch.Tensor:
        """``fakes`` with ``fake_transform`` applied to each (unchanged without one)."""
        if self.fake_transform is None:
            return fakes
        return torch.stack([_plain(self.fake_transform({"image": x})["image"]).to(fakes) for x in fakes])

    def _discriminator_step(self, engine, output, image, label, unlabeled, fakes: Fakes | None) -> bool:
        """Update D (``_discriminator_loss``) unless its loss is non-finite somewhere; batch norm's running
        statistics end as the real patches' pass set them, or as they were when the update is skipped. Adds
        ``pred``, ``loss`` and the ``loss_d_*`` terms to ``output``; returns whether the update was taken."""
        ramp = self.gan_ramp(engine.state.iteration)
        unlabelled, synthetic, fake_class = self._discriminator_patches(ramp, unlabeled, fakes)
        buffers = list(unwrap(self.network).buffers())
        before = [b.clone() for b in buffers]
        target = None if fakes is None else fakes.target
        self.d_optimizer.zero_grad(set_to_none=True)
        with self._autocast(), record_function("discriminator forward"):
            labelled_logits, d_terms, real_stats = self._discriminator_loss(
                image, label, unlabelled, synthetic, fake_class, target, ramp
            )
        output[Keys.PRED] = labelled_logits.detach()
        if synthetic is not None and self.fake_transform is not None:
            output["synthetic"] = synthetic
        ok = self._finite(engine, d_terms, "discriminator")
        if ok:
            with record_function("discriminator backward and update"):
                self._step(d_terms["total"], self.d_optimizer, self.d_scaler)
        # after the backward pass, which needs the buffers unchanged
        kept = real_stats if ok else before
        for buffer, value in zip(buffers, kept or []):
            buffer.copy_(value)
        output[Keys.LOSS] = d_terms["total"].detach()
        output.update({f"loss_d_{k}": v.detach() for k, v in d_terms.items()})
        return ok

    def _discriminator_loss(self, image, label, unlabelled, synthetic, fake_class, target, ramp: float):
        """``(labelled logits, D's loss terms, running statistics after the real pass)``. One pass over the labelled
        and unlabelled patches, then one over the generated ones (the fakes once when they serve both the synthetic
        and the fake-class term), whose running statistics the caller undoes (``None``: no generated pass)."""
        real = image if unlabelled is None else torch.cat([image, unlabelled])
        logits = self.network(real)
        sizes = [image.shape[0], real.shape[0] - image.shape[0]]
        labelled_logits, unlabelled_logits = torch.split(logits, sizes)
        generated = [t for t in (synthetic, fake_class) if t is not None]
        if len(generated) == 2 and self.fake_maps == "same":
            generated = generated[:1]
        generated_logits = real_stats = None
        if generated:
            real_stats = [b.clone() for b in unwrap(self.network).buffers()]
            generated_logits = unwrap(self.network)(torch.cat(generated))  # one DDP forward per backward
            generated_logits = torch.split(generated_logits, [t.shape[0] for t in generated])
        d_terms = self.d_loss_function(
            labelled_logits, label, unlabelled_logits=unlabelled_logits if unlabelled is not None else None,
            fake_logits=generated_logits[-1] if fake_class is not None else None,
            synthetic_logits=generated_logits[0] if synthetic is not None else None,
            synthetic_label=target, scale=ramp,
        )  # fmt: skip
        return labelled_logits, d_terms, real_stats

    def _generator_step(self, engine, output, image, label, unlabeled, fakes: Fakes, clusters=None) -> bool:
        """Update G against the frozen D unless its loss is non-finite somewhere (``scripts.losses.GeneratorLoss``;
        docs/gan_training.md). Adds the ``loss_g_*`` terms to ``output``; returns whether the update was taken.

        The MRI-GAN generator's fakes are matched class-wise to the labelled patches (``matching_target``
        ``"unlabelled"``: the unlabelled ones under their ``clusters``); the appearance target is the
        statistics the fakes were rendered with (``source_statistics`` generators) or else their sources' class-wise
        statistics under D's probabilities. The Standard-GAN generator matches all real patches' mean features.
        """
        conditional = unwrap(self.generator).conditional
        # the sources' probabilities give the appearance target, unless the rendered statistics are that target
        sources = self._sources(unlabeled, fakes.image.shape[0]) if conditional and fakes.stats is None else None
        real, real_label = image, label
        if not conditional and unlabeled is not None:
            real = torch.cat([image, unlabeled])
        elif conditional and self.matching_target == "unlabelled":
            if clusters is None:
                raise KeyError("matching_target 'unlabelled' needs a 'clusters' map in the unlabelled batches "
                               "(TissueClustersd)")
            real, real_label = unlabeled, clusters
        self.g_optimizer.zero_grad(set_to_none=True)
        # the frozen D gets no gradients, so it runs outside its DDP wrapper, which only exposes ``forward``;
        # G's gradients flow through it into G's own wrapper, which averages them across processes
        with frozen(self.network), self._autocast():
            real_features, source_probs = self._real_features(real, sources)
            fake_logits, fake_features = unwrap(self.network).forward_features(fakes.image)
            g_terms = self.g_loss_function(
                real_features, fake_features[self.feature_layer], fake_logits,
                label=real_label if conditional else None, fake_label=fakes.target if conditional else None,
                boundary_logits=fakes.boundary_logits, reconstruction=fakes.reconstruction,
                reconstruction_target=fakes.original,
                fake=fakes.image, source=sources, source_probs=source_probs, source_stats=fakes.stats,
            )  # fmt: skip
        ok = self._finite(engine, g_terms, "generator")
        if ok:
            self._step(g_terms["total"], self.g_optimizer, self.g_scaler)
        output.update({f"loss_g_{k}": v.detach() for k, v in g_terms.items()})
        return ok

    @torch.no_grad()
    def _real_features(self, real: torch.Tensor, sources: torch.Tensor | None):
        """D's ``feature_layer`` features of the real patches and its tissue probabilities on the ``sources``
        (``None`` without), in one pass without gradients: in the generator step only the fakes need a backward."""
        seen = real if sources is None else torch.cat([real, sources])
        seen_logits, seen_features = unwrap(self.network).forward_features(seen)
        sizes = [real.shape[0], seen.shape[0] - real.shape[0]]
        real_features = torch.split(seen_features[self.feature_layer], sizes)[0]
        source_probs = None if sources is None else torch.softmax(torch.split(seen_logits, sizes)[1].float(), 1)
        return real_features, source_probs
