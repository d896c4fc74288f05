"""Lightning callbacks: atomic checkpoints with a `latest` pointer, status.json progress, and
exact mid-epoch resume of our sampler."""

from __future__ import annotations

import os
import time
from pathlib import Path

import lightning as L

from oneseg.engine.module import NonFiniteLossError
from oneseg.errors import Stopped
from oneseg.io import raise_if_no_space, temp_path

LATEST = "model_latest.ckpt"


def save_checkpoint_atomic(trainer: L.Trainer, path: Path, **options) -> None:
    """`trainer.save_checkpoint` to a temporary file renamed onto `path` (by rank 0, which
    writes it). On any failure the temporary file is removed; a full disk is `NoSpace` naming
    the folder and about what the checkpoint needs (weights and two optimizer moments)."""
    tmp = temp_path(path)
    try:
        trainer.save_checkpoint(tmp, **options)
        if trainer.is_global_zero:
            os.replace(tmp, path)
    except BaseException as err:
        written = tmp.stat().st_size if tmp.is_file() else 0
        tmp.unlink(missing_ok=True)
        module = trainer.lightning_module
        weights = sum(t.numel() * t.element_size() for t in module.state_dict().values())
        raise_if_no_space(err, path.parent, max(written, 3 * weights))
        raise


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint the `latest` pointer of a training folder names, if any."""
    link = Path(folder) / LATEST
    return link.resolve() if link.is_symlink() and link.resolve().is_file() else None


class AtomicCheckpoint(L.Callback):
    """Saves every `interval` epochs or steps (temp file + rename), points `model_latest.ckpt`
    at the newest, and saves `model_crash.ckpt` when training dies after its first step of
    anything but a bad loss, an interrupt or a stop (SIGTERM)."""

    def __init__(self, folder: str | Path, interval: int, unit: str):
        self.folder = Path(folder)
        self.interval = interval
        self.unit = unit

    def save(self, trainer: L.Trainer, module, name: str, latest: bool = True) -> Path:
        path = self.folder / name
        save_checkpoint_atomic(trainer, path, weights_only=False)  # optimizer and loops too
        if trainer.is_global_zero and latest:
            link_tmp = self.folder / (LATEST + ".tmp")
            link_tmp.unlink(missing_ok=True)
            link_tmp.symlink_to(path.name)
            os.replace(link_tmp, self.folder / LATEST)
        trainer.strategy.barrier("checkpoint")
        if latest:
            module.last_checkpoint = str(path)
        return path

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.unit == "step" and trainer.global_step % self.interval == 0:
            self.save(trainer, module, f"model_step{trainer.global_step:07d}.ckpt")

    def on_train_epoch_end(self, trainer, module) -> None:
        epoch = trainer.current_epoch + 1
        if self.unit == "epoch" and (epoch % self.interval == 0 or epoch == trainer.max_epochs):
            self.save(trainer, module, f"model_epoch{epoch:03d}.ckpt")

    def on_exception(self, trainer, module, exception) -> None:
        if isinstance(exception, (NonFiniteLossError, KeyboardInterrupt, Stopped, SystemExit)):
            return
        if trainer.global_step == 0:  # nothing learnt yet: no untrained weights to keep
            return
        try:
            # not the `latest`: a crash may leave a half-done step; resume takes the last good
            self.save(trainer, module, "model_crash.ckpt", latest=False)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            pass


class SamplerSetup(L.Callback):
    """Gives our samplers this process's rank once Lightning knows it, and makes a resumed run
    see exactly the samples the uninterrupted run would have.

    Lightning restarts a plain data loader from the beginning of the epoch; so this callback keeps
    (epoch, batches done) in the checkpoint and, on restore, sets the sampler's epoch and skips
    the batches already trained, before Lightning creates the first iterator.
    """

    def __init__(self, sampler, batch_size: int, other_samplers=()):
        self.sampler = sampler
        self.batch_size = batch_size
        self.samplers = [sampler, *other_samplers]
        self.epoch = 0
        self.batches_done = 0

    def setup(self, trainer, module, stage: str) -> None:
        for sampler in self.samplers:
            sampler.rank, sampler.world_size = trainer.global_rank, trainer.world_size

    def on_train_epoch_start(self, trainer, module) -> None:
        self.epoch, self.batches_done = trainer.current_epoch, 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.batches_done = batch_idx + 1

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict) -> None:
        epoch, done = state["epoch"], state["batches_done"]
        if done >= len(self.sampler) // self.batch_size:  # saved at the end of an epoch
            epoch, done = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self.sampler.skip(done * self.batch_size)


class StatusCallback(L.Callback):
    """Progress, loss, learning rate, ETA and validation KPIs into status.json."""

    def __init__(self, run, every_n_steps: int):
        self.run = run
        self.every = every_n_steps
        self.start = time.time()
        self.start_step = 0

    def on_train_start(self, trainer, module) -> None:
        self.start = time.time()
        self.start_step = trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every:
            return
        metrics = trainer.callback_metrics
        done = max(step - self.start_step, 1)
        total = trainer.max_steps if trainer.max_steps > 0 else module.total_steps
        eta = (time.time() - self.start) / done * max(total - step, 0)
        self.run.log(
            "RUNNING",
            epoch=trainer.current_epoch,
            max_epoch=trainer.max_epochs,
            step=step,
            max_step=total,
            loss=float(metrics.get("loss", float("nan"))),
            lr=float(metrics.get("lr", float("nan"))),
            eta_s=round(eta, 1),
        )

    def on_validation_end(self, trainer, module) -> None:
        if trainer.sanity_checking or not module.last_metrics:
            return
        kpi = {k: v for k, v in module.last_metrics.items() if isinstance(v, (int, float))}
        self.run.kpis.update(kpi)
        self.run.log("RUNNING", epoch=trainer.current_epoch, step=trainer.global_step, kpi=kpi)


class WeightSyncCheck(L.Callback):
    """At the end of a multi-process run, checks every rank holds the same weights (one
    checksum per rank, gathered) and records it as the KPI `weights_in_sync`."""

    def __init__(self, run):
        self.run = run

    def on_train_end(self, trainer, module) -> None:
        if trainer.world_size < 2:
            return
        import torch

        checksum = torch.stack([p.detach().double().sum() for p in module.model.parameters()]).to(
            module.device
        )
        gathered = trainer.strategy.all_gather(checksum)  # [world, P]
        in_sync = bool(torch.equal(gathered.min(0).values, gathered.max(0).values))
        self.run.kpis["weights_in_sync"] = in_sync
        if not in_sync:
            self.run.log("RUNNING", message="warning: ranks hold different weights")


BEST = "model_best.ckpt"
# The task whose evaluation gives each monitored metric; "loss" needs no validation.
MONITOR_TASK = {"miou": "semantic", "pq": "panoptic", "ap": "instance", "loss": None}


class BestCheckpoint(L.Callback):
    """Keeps `model_best.ckpt` (temp file + rename) at the best value of `train.monitor`, logs
    the value and epoch to status.json, and stops training after `patience` evaluations
    without improvement (0 = never).

    miou / pq / ap are read after each validation, higher being better; "loss" is the mean
    training loss of each epoch (averaged over processes), lower being better. A NaN value
    never counts as an improvement.
    """

    def __init__(self, folder: str | Path, monitor: str, patience: int, run):
        self.folder = Path(folder)
        self.monitor = monitor
        self.patience = patience
        self.run = run
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.stale = 0
        self._loss_sum = 0.0
        self._loss_count = 0

    def _better(self, value: float) -> bool:
        if value != value:  # NaN
            return False
        if self.best is None:
            return True
        return value < self.best if self.monitor == "loss" else value > self.best

    def _consider(self, trainer, module, value: float) -> None:
        epoch = trainer.current_epoch
        if self._better(value):
            self.best, self.best_epoch, self.stale = value, epoch, 0
            path = self.folder / BEST
            save_checkpoint_atomic(trainer, path)
            trainer.strategy.barrier("best_checkpoint")
            self.run.kpis.update({f"best_{self.monitor}": value, "best_epoch": epoch})
            self.run.log(
                "RUNNING",
                message=f"new best {self.monitor} {value:.4g}: {BEST}",
                epoch=epoch,
                step=trainer.global_step,
                best={"monitor": self.monitor, "value": value, "epoch": epoch, "file": BEST},
            )
            return
        self.stale += 1
        stop = bool(self.patience) and self.stale >= self.patience
        if trainer.strategy.reduce_boolean_decision(stop, all=False):
            trainer.should_stop = True
            self.run.log(
                "RUNNING",
                message=f"early stop: {self.monitor} not better than {self.best:.4g} (epoch "
                f"{self.best_epoch}) for {self.stale} evaluations",
                epoch=epoch,
                step=trainer.global_step,
            )

    def on_train_epoch_start(self, trainer, module) -> None:
        self._loss_sum, self._loss_count = 0.0, 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._loss_sum += float(loss.detach())
            self._loss_count += 1

    def on_train_epoch_end(self, trainer, module) -> None:
        if self.monitor != "loss" or not self._loss_count:
            return
        import torch

        mean = torch.tensor(self._loss_sum / self._loss_count, device=module.device)
        self._consider(trainer, module, float(trainer.strategy.reduce(mean, reduce_op="mean")))

    def on_validation_end(self, trainer, module) -> None:
        if self.monitor == "loss" or trainer.sanity_checking or not module.last_metrics:
            return
        value = module.last_metrics.get(self.monitor)
        if isinstance(value, (int, float)):
            self._consider(trainer, module, float(value))

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "stale": self.stale}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.stale = state["best"], state["best_epoch"], state["stale"]
