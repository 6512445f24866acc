"""TorchHBackend: the H path in eager torch behind ``core.context_step.HBackend``.

The observation arrays of ``ObservationSchema.prepare_arrays`` become an ``ObservationBatch``
without a copy (``ObservationBatch.from_arrays``), exactly the tensors training sees, and go
through ``SageHL.encode`` in inference mode. Kept apart from context_step.py so that importing the
step (as the ONNX Runtime context node does) never imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from .observation import ObservationBatch


class TorchHBackend:
    """``SageHL.encode`` on CPU/GPU tensors, in inference mode."""

    def __init__(self, model):
        self.model = model
        self.observation_config = model.cfg.observation
        self.latent_dim = int(model.cfg.model.latent_dim)
        self.device = next(model.parameters()).device

    def initial_state(self):
        return self.model.initial_state(1)

    def encode(self, arrays: Mapping[str, np.ndarray], state):
        batch = ObservationBatch.from_arrays(dict(arrays))
        if self.device.type != "cpu":
            batch = batch.to(self.device)
        with torch.inference_mode():
            z, _, new_state = self.model.encode(batch, state)
        return z[0].cpu().numpy(), new_state

    def state_is_finite(self, state) -> bool:
        return bool(torch.isfinite(state.history).all())
