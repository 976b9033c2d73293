"""Mean-teacher baseline: semi-supervised segmentation by consistency with an averaged teacher, no generator."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from monai.utils import CommonKeys as Keys
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..checkpoint import unwrap
from .gan import SemiSupervisedGanTrainer


def sigmoid_rampup(iteration: float, rampup_iterations: float) -> float:
    """``exp(-5 (1 - min(t / T, 1))^2)`` (Laine & Aila 2017; Yu et al. 2019); 1 from the start when ``T <= 0``."""
    if rampup_iterations <= 0:
        return 1.0
    phase = 1.0 - min(max(float(iteration), 0.0) / rampup_iterations, 1.0)
    return math.exp(-5.0 * phase * phase)


class MeanTeacherTrainer(SemiSupervisedGanTrainer):
    """Mean teacher (Tarvainen & Valpola 2017), as used for 3D medical segmentation by Yu et al. 2019 (UA-MT,
    without the uncertainty mask): one student step per iteration, then an EMA update of the teacher.

    Each iteration draws a labelled batch and an unlabelled batch (cycled like the GAN trainer's). The student
    (``network``) sees the labelled patches and a noisy copy of the unlabelled ones (Gaussian noise, std
    ``noise_std``; inputs are in [-1, 1]) in one concatenated forward pass, so batch norm normalises them together.
    The teacher (``self.teacher``, ``AveragedModel`` of the student with EMA decay ``ema_decay``, batch-norm buffers
    averaged too) sees the clean unlabelled patches in evaluation mode without gradients. The loss is
    ``d_loss_function(labelled logits, label)["total"] + w(t) * consistency``, the consistency being the mean squared
    difference of the two softmax maps, and ``w(t) = consistency_weight * exp(-5 (1 - min(t / rampup_iterations,
    1))^2)``, ``t`` the number of completed iterations. The teacher starts as a copy of the initial student and is
    updated after every student step that was taken (non-finite losses skip both, as in the parent).

    Validation (``validate#evaluator``) keeps evaluating the student ``network``, the simplest choice; the teacher is
    exposed as ``self.teacher`` (its network: ``self.teacher.module``) for saving or evaluating separately.
    ``engine.state.output`` follows the parent: a one-item list whose dict holds ``image``, ``label``, ``pred`` (the
    student's labelled logits), ``loss`` and ``loss_d_labelled`` / ``loss_d_consistency`` / ``loss_d_total``, plus
    ``consistency_weight`` (w(t) of the step, not a loss).

    Args:
        network: the student segmenter (may be wrapped in DDP; the teacher averages the module inside the wrapper).
        d_optimizer: the student's optimiser; d_loss_function: ``scripts.losses.DiscriminatorLoss`` (labelled term).
        unlabeled_data_loader: unlabelled patches (required).
        ema_decay: EMA decay of the teacher; consistency_weight: final weight of the consistency term;
        rampup_iterations: iterations of the sigmoid ramp-up of that weight.
        noise_std: std of the Gaussian noise on the student's unlabelled patches.
        teacher: a prebuilt ``AveragedModel`` of the (unwrapped) student to use as the teacher, e.g. one the config
            also lists in ``checkpoint#objects`` so that it is saved and resumed (configs/mean_teacher.yaml); by default
            ``AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)``. A given
            teacher keeps its own averaging function (build it with the same ``ema_decay``).
        trainer_options: the other arguments of ``SemiSupervisedGanTrainer`` (``monai.engines.Trainer``'s, passed on
            as they are, and the GAN-only ones, so that train.yaml's trainer block can be reused as it is: the
            generator ones must be ``None``, the others are unused here). ``rampup_iterations`` is this trainer's
            consistency ramp, not the parent's GAN ramp.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        d_optimizer: torch.optim.Optimizer,
        d_loss_function: nn.Module,
        unlabeled_data_loader: Iterable | None = None,
        ema_decay: float = 0.99,
        consistency_weight: float = 0.1,
        rampup_iterations: int = 200,
        noise_std: float = 0.1,
        teacher: AveragedModel | None = None,
        **trainer_options,
    ):
        if any(trainer_options.get(k) is not None for k in ("generator", "g_optimizer", "g_loss_function")):
            raise ValueError("MeanTeacherTrainer has no generator: set generator, g_optimizer and g_loss to null")
        if unlabeled_data_loader is None:
            raise ValueError("the mean teacher needs unlabelled patches: give unlabeled_data_loader")
        if not 0.0 <= float(ema_decay) <= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1], got {ema_decay}")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            d_optimizer=d_optimizer,
            d_loss_function=d_loss_function,
            unlabeled_data_loader=unlabeled_data_loader,
            **trainer_options,
        )
        self.ema_decay, self.consistency_weight = float(ema_decay), float(consistency_weight)
        self.rampup_iterations, self.noise_std = int(rampup_iterations), float(noise_std)
        student = unwrap(network)
        if teacher is None:
            teacher = AveragedModel(student, multi_avg_fn=get_ema_multi_avg_fn(self.ema_decay), use_buffers=True)
        elif not isinstance(teacher, AveragedModel):
            raise TypeError(f"teacher must be a torch.optim.swa_utils.AveragedModel, got {type(teacher).__name__}")
        self.teacher = teacher
        if int(self.teacher.n_averaged) == 0:
            self.teacher.update_parameters(student)  # a copy of the student; the next update is already an EMA step
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def consistency_weight_at(self, iteration: float) -> float:
        """w(t) = consistency_weight * exp(-5 (1 - min(t / rampup_iterations, 1))^2)."""
        return self.consistency_weight * sigmoid_rampup(iteration, self.rampup_iterations)

    def _iteration(self, engine: MeanTeacherTrainer, batchdata: dict[str, torch.Tensor]) -> list[dict]:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        image, label = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)[:2]
        unlabeled = self._next_unlabeled(engine)[0]
        output: dict = {Keys.IMAGE: image, Keys.LABEL: label}
        weight = self.consistency_weight_at(engine.state.iteration - 1)

        self.teacher.eval()
        with torch.no_grad(), self._autocast():
            teacher_prob = self.teacher(unlabeled).float().softmax(1)

        self.network.train()
        noisy = unlabeled + torch.randn_like(unlabeled) * self.noise_std
        buffers = [(b, b.clone()) for b in unwrap(self.network).buffers()]
        self.d_optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            logits = self.network(torch.cat([image, noisy]))
            labelled_logits, unlabelled_logits = torch.split(logits, [image.shape[0], noisy.shape[0]])
            labelled = self.d_loss_function(labelled_logits, label)  # {"labelled", "total"}
            consistency = nn.functional.mse_loss(unlabelled_logits.float().softmax(1), teacher_prob)
            terms = {
                "labelled": labelled["labelled"],
                "consistency": consistency,
                "total": labelled["total"] + weight * consistency,
            }
        output[Keys.PRED] = labelled_logits.detach()
        ok = self._finite(engine, terms, "student")
        if ok:
            self._step(terms["total"], self.d_optimizer, self.d_scaler)
            self.teacher.update_parameters(unwrap(self.network))
        else:
            for buffer, saved in buffers:
                buffer.copy_(saved)
        output[Keys.LOSS] = terms["total"].detach()
        output.update({f"loss_d_{k}": v.detach() for k, v in terms.items()})
        output["consistency_weight"] = weight

        self._count_nonfinite(engine, ok)
        engine.state.output = [output]
        return [output]
