"""Ignite handlers the bundle adds to MONAI's."""

from __future__ import annotations

from ignite.engine import Engine
from ignite.handlers import ProgressBar


class LossProgressBar(ProgressBar):
    """Ignite progress bar that shows the iteration loss; attachable from a config's handler list."""

    def __init__(self, loss_key: str = "loss", **kwargs):
        kwargs.setdefault("persist", True)
        super().__init__(**kwargs)
        self.loss_key = loss_key

    def attach(self, engine: Engine, *args, **kwargs) -> None:  # type: ignore[override]
        kwargs.setdefault("output_transform", self._loss)
        super().attach(engine, *args, **kwargs)

    def _loss(self, output) -> dict[str, float]:
        item = output[0] if isinstance(output, list) else output
        return {self.loss_key: float(item[self.loss_key])}
