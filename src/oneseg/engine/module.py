"""The LightningModule: one training step of the OneFormer recipe, validation through the
evaluator, optimizer groups, and the extra state a checkpoint needs to resume exactly."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch
import torch.distributed as dist

from oneseg.checkpoint import make_checkpoint
from oneseg.engine.optim import build_optimizer
from oneseg.model.postprocess import PostprocessConfig
from oneseg.runner import TorchRunner, run_batch


class NonFiniteLossError(RuntimeError):
    """A NaN or inf loss; the message names the step, the samples and the last good checkpoint."""


class SegmentationModule(L.LightningModule):
    """Wraps a built model and criterion.

    Arguments:
        model: the OneFormer / Mask2Former network.
        criterion: the SetCriterion: `criterion(outputs, targets)` gives the unweighted losses,
            `criterion.total(losses)` their weighted sum.
        optim_cfg: the spec's `train.optim` section.
        total_steps: optimizer steps of the whole run (for the poly schedule).
        model_cfg, label_map: stored in every checkpoint so it rebuilds the model by itself.
        intensity: the rule that made >8-bit images 0-255 (a dict), stored beside them.
        evaluator_factory: `() -> Evaluator` used by validation, or None for loss-only validation.
    """

    def __init__(
        self,
        *,
        model,
        criterion,
        optim_cfg,
        total_steps: int,
        model_cfg,
        label_map,
        evaluator_factory=None,
        intensity: dict | None = None,
    ):
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.optim_cfg = optim_cfg
        self.total_steps = total_steps
        self.model_cfg = model_cfg
        self.label_map = label_map
        self.intensity = intensity
        self.evaluator_factory = evaluator_factory
        self.evaluator = None
        self.last_checkpoint: str | None = None
        self._rng_to_restore = None
        self.last_metrics: dict = {}

    # ------------------------------------------------------------------ training
    def forward(self, batch: dict) -> dict:
        images = self.model.normalize(batch["images"].float(), batch["image_sizes"])
        return self.model(images, batch.get("task_tokens"), batch.get("text_tokens"))

    def training_step(self, batch: dict, batch_idx: int):
        if self._rng_to_restore is not None:
            _set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        outputs = self(batch)
        losses = self.criterion(outputs, batch["targets"])
        total = self.criterion.total(losses)
        self._stop_if_not_finite(total, batch)
        batch_size = batch["images"].shape[0]
        self.log("loss", total, prog_bar=True, batch_size=batch_size, sync_dist=False)
        main = {k: v for k, v in losses.items() if not k[-1].isdigit()}
        self.log_dict({f"train/{k}": v for k, v in main.items()}, batch_size=batch_size)
        lr = self.trainer.optimizers[0].param_groups[-1]["lr"] if self.trainer else 0.0
        self.log("lr", lr, prog_bar=True, batch_size=batch_size)
        return total

    def _stop_if_not_finite(self, total: torch.Tensor, batch: dict) -> None:
        bad = (~torch.isfinite(total.detach())).float()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(bad)  # every rank stops together, none waits forever
        if bad.item() > 0:
            ids = [str(i) for i in batch.get("image_ids", [])]
            raise NonFiniteLossError(
                f"loss is {total.item()} at step {self.global_step} (samples {', '.join(ids)} "
                f"on rank {self.global_rank}); no checkpoint written; last good checkpoint: "
                f"{self.last_checkpoint or 'none'}"
            )

    def configure_optimizers(self):
        # bf16-mixed, the setting for speed, runs AdamW fused; 32 keeps the per-tensor loop,
        # so its results stay bit for bit those of earlier versions
        fused = self.trainer.precision == "bf16-mixed"
        optimizer, scheduler = build_optimizer(
            self.model, self.optim_cfg, self.total_steps, fused=fused
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Lightning's mixed-precision plugin refuses to clip for a fused optimizer (one that
        would unscale fp16 gradients itself); bf16-mixed scales no gradients, so its fused
        AdamW's gradients are clipped here, by their norm as the plugin does."""
        if gradient_clip_val and optimizer.defaults.get("fused"):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self.evaluator = self.evaluator_factory() if self.evaluator_factory else None

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if self.evaluator is not None:
            runner = TorchRunner(
                self.model,
                self.label_map,
                PostprocessConfig.of_model(self.model_cfg),
                self.evaluator.tasks,
            )
            self.evaluator.update(batch, run_batch(runner, batch, self.evaluator.tasks))

    def on_validation_epoch_end(self) -> None:
        if self.evaluator is None:
            return
        metrics = self.evaluator.compute(gather=True)
        self.last_metrics = metrics
        flat = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if flat:
            self.log_dict({f"val/{k}": v for k, v in flat.items()}, rank_zero_only=True)
        self.evaluator = None

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        meta = make_checkpoint(self.model_cfg, self.label_map, {}, self.intensity)
        checkpoint["oneseg"] = {k: v for k, v in meta.items() if k != "state_dict"}
        checkpoint["rng_state"] = _get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._rng_to_restore = checkpoint.get("rng_state")

    def on_train_start(self) -> None:
        """A resumed optimizer's state brings the `fused` flag of the run that saved it: keep
        this run's (fused in bf16-mixed only), so a `32` run stays on the per-tensor loop."""
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                if "fused" in group:
                    group["fused"] = optimizer.defaults.get("fused")


def _get_rng_state() -> dict:
    """RNG states as tensors and plain lists, so the checkpoint loads with weights_only=True."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": [version, list(py_state), py_gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
