"""Ignite handlers and output transforms the bundle adds to MONAI's."""

from __future__ import annotations

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from torch.utils.tensorboard import SummaryWriter


def loss_terms(output) -> dict[str, float]:
    """Every loss value of a trainer's output dict: ``loss`` and the ``loss_d_*``/``loss_g_*`` terms, as floats."""
    item = output[0] if isinstance(output, list) else output
    return {k: float(v) for k, v in item.items() if k == "loss" or k.startswith("loss_")}


class LossProgressBar(ProgressBar):
    """Ignite progress bar showing the iteration's discriminator loss (and generator loss in GAN training)."""

    def __init__(self, loss_key: str = "loss", **kwargs):
        kwargs.setdefault("persist", True)
        super().__init__(**kwargs)
        self.loss_key = loss_key

    def attach(self, engine: Engine, *args, **kwargs) -> None:  # type: ignore[override]
        kwargs.setdefault("output_transform", self._loss)
        super().attach(engine, *args, **kwargs)

    def _loss(self, output) -> dict[str, float]:
        terms = loss_terms(output)
        shown = {self.loss_key: terms[self.loss_key]}
        if "loss_g_total" in terms:
            shown["loss_g"] = terms["loss_g_total"]
        return shown


class GanImageHandler:
    """Write the middle axial slice of the first patch of an iteration to TensorBoard, every ``interval`` epochs.

    Panels (tags ``<tag>/real``, ``/fake``, ``/label``, ``/segmentation``): the first modality of the labelled
    patch, the fake generated from its tissue map (when there is a generator), its label and the discriminator's
    arg-max segmentation. Intensities are mapped from [-1, 1] and labels from 0..K-1 to [0, 1].
    """

    def __init__(self, log_dir: str, interval: int = 1, num_classes: int = 4, tag: str = "train"):
        self.log_dir, self.interval, self.num_classes, self.tag = log_dir, interval, num_classes, tag
        self._writer: SummaryWriter | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, lambda _: self._writer and self._writer.close())

    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        panels = {"real": (out["image"][0, 0] + 1) / 2, "label": out["label"][0, 0].float() / (self.num_classes - 1)}
        if "fake" in out:
            panels["fake"] = (out["fake"][0, 0] + 1) / 2
        if "pred" in out:
            panels["segmentation"] = out["pred"][0].argmax(0).float() / (self.num_classes - 1)
        if self._writer is None:
            self._writer = SummaryWriter(log_dir=self.log_dir)
        for name, volume in panels.items():
            image = volume[..., volume.shape[-1] // 2].detach().float().cpu().clamp(0, 1)
            self._writer.add_image(f"{self.tag}/{name}", image[None], engine.state.epoch)
        self._writer.flush()
