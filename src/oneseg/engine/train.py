"""`oneseg train`: build everything from the spec and fit with Lightning.

One CPU process, one GPU, many GPUs (DDP over NCCL) or CPU processes (DDP over gloo), and
several nodes (WORLD_SIZE, NODE_RANK, MASTER_ADDR, MASTER_PORT, read by Lightning).
"""

from __future__ import annotations

import logging
import math
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader

from oneseg.checkpoint import load_state_dict_strict, read_checkpoint
from oneseg.config import ARCHITECTURE_KEYS
from oneseg.convert.backbone_weights import load_pretrained_backbone
from oneseg.cpu_threads import set_intra_op_threads
from oneseg.data.archive import with_unpacked_archives
from oneseg.data.build import build_dataset, model_label_map
from oneseg.data.image_io import dataset_window
from oneseg.data.intensity import Intensity
from oneseg.engine.callbacks import (
    BEST,
    MONITOR_TASK,
    AtomicCheckpoint,
    BestCheckpoint,
    SamplerSetup,
    StatusCallback,
    WeightSyncCheck,
    latest_checkpoint,
)
from oneseg.engine.evaluator import Evaluator
from oneseg.engine.module import SegmentationModule
from oneseg.engine.processes import process_layout
from oneseg.engine.sampling import EpochSampler, SeededDataset
from oneseg.errors import CheckpointError, ResultsDirError
from oneseg.model.build import build_model, supported_tasks
from oneseg.model.criterion import build_criterion

# Lightning's messages that say nothing about this run: an advertisement, a hardware line that
# is always false here, and a note on a value we set on purpose. Warnings are kept.
_LIGHTNING_CHATTER = ("litlogger", "TPU available: False", "was configured so 100%")


class _DropChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in _LIGHTNING_CHATTER)


def quiet_lightning() -> None:
    """Keep Lightning's chatter and a deprecation inside Lightning itself (torch's `LeafSpec`,
    not ours to fix) out of the user's terminal; its real warnings still show."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropChatter) for f in logger.filters):
        logger.addFilter(_DropChatter())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


log = logging.getLogger(__name__)


def text_list_length(spec) -> int:
    if spec.model.arch == "mask2former":
        return 0
    if spec.dataset.text_list_len:
        return spec.dataset.text_list_len
    return max(spec.model.num_queries - spec.model.text_encoder.n_ctx, 1)


def device_settings(train_cfg) -> dict:
    """Trainer keyword arguments for the accelerator, devices, nodes and strategy."""
    use_gpu, devices, count = process_layout(train_cfg)
    world = count * train_cfg.num_nodes
    precision = train_cfg.precision
    strategy = "ddp" if world > 1 else "auto"
    if world > 1 and not use_gpu:
        strategy = L.pytorch.strategies.DDPStrategy(process_group_backend="gloo")
    return {
        "accelerator": "gpu" if use_gpu else "cpu",
        "devices": devices,
        "num_nodes": train_cfg.num_nodes,
        "strategy": strategy,
        "world_size": world,
        # CPUs compute bf16 (Lightning autocasts); fp16 autocast exists only on GPUs
        "precision": "32" if precision == "16-mixed" and not use_gpu else precision,
    }


def build_model_for_training(spec, num_classes: int):
    model = build_model(spec.model, num_classes=num_classes)
    if spec.model.pretrained:
        _, _, state = read_checkpoint(spec.model.pretrained)
        load_state_dict_strict(model, state, spec.model.pretrained)
    if spec.train.pretrained_model:
        _, _, state = read_checkpoint(spec.train.pretrained_model)
        left = load_matching_weights(model, state, spec.train.pretrained_model)
        if left:
            print(
                f"oneseg train: train.pretrained_model: {len(left)} model tensors do not fit "
                f"{spec.train.pretrained_model} and start from initial values: "
                f"{', '.join(left[:8])}{' ...' if len(left) > 8 else ''}",
                file=sys.stderr,
            )
    if spec.train.pretrained_backbone:
        load_pretrained_backbone(model.backbone, spec.train.pretrained_backbone)
    if spec.train.freeze_backbone:
        model.backbone.requires_grad_(False)
    return model


def random_backbone_warning(spec) -> str | None:
    """A warning when the backbone starts from random weights, else None."""
    if spec.train.pretrained_backbone or spec.model.pretrained or spec.train.pretrained_model:
        return None
    message = (
        f"the {spec.model.backbone} backbone starts from random weights (no "
        "train.pretrained_backbone, model.pretrained or train.pretrained_model): published "
        "models start from ImageNet weights and train far better"
    )
    if spec.model.backbone_frozen_bn and spec.model.backbone.startswith(("resnet", "efficient")):
        message += "; its BatchNorm stays frozen at its initial values (model.backbone_frozen_bn)"
    return message


def load_matching_weights(model: torch.nn.Module, state: dict, source: str) -> list[str]:
    """Load every tensor whose name and shape fit (a fine-tune may change the class count);
    returns the names left at their initial values."""
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fitting:
        raise CheckpointError(f"{source}: no tensor of these weights fits the model")
    model.load_state_dict(fitting, strict=False)
    return sorted(set(own) - set(fitting))


def check_resumable(path, model_cfg, label_map) -> None:
    """Refuse, before Lightning restores it, a checkpoint that cannot be read weights-only or
    that holds another model than the spec describes."""
    saved_cfg, saved_labels, _ = read_checkpoint(path)
    differ = [
        name for name in ARCHITECTURE_KEYS if getattr(saved_cfg, name) != getattr(model_cfg, name)
    ]
    if saved_labels.category_ids != label_map.category_ids:
        differ.append("classes")
    if differ:
        raise ResultsDirError(
            f"{path}: a run of another model ({', '.join(differ)} differ); use a new "
            "results_dir, or the model settings of that run"
        )


def build_loaders(spec, label_map, world_size: int):
    """Loaders over our samplers; ranks are set by SamplerSetup once the processes exist."""
    divisibility = spec.model.size_divisibility
    texts = text_list_length(spec)
    # OneFormer draws each sample's task (dataset.task_prob) and reads task and text tokens;
    # Mask2Former trains on the targets of its one mode and takes no tokens.
    mask2former = spec.model.arch == "mask2former"
    train_set = build_dataset(
        spec.dataset,
        "train",
        label_map,
        text_list_len=texts,
        size_divisibility=divisibility,
        task_text=spec.model.task_text,
        train=True,
        task=spec.model.mode if mask2former else None,
        tokens=not mask2former,
    )
    sampler = EpochSampler(
        len(train_set),
        seed=spec.train.seed,
        shuffle=True,
        world_size=world_size,
        drop_last=True,
    )
    batch_size = spec.dataset.batch_size
    loader_kwargs = {
        "num_workers": spec.dataset.workers,
        "pin_memory": spec.dataset.pin_memory and torch.cuda.is_available(),
        "collate_fn": train_set.collate_fn,
        "persistent_workers": spec.dataset.workers > 0,
    }
    # one window for every image when the rule is per dataset; recorded in the checkpoint
    rule = Intensity.from_config(spec.dataset.intensity)
    train_set.intensity = dataset_window((r.image_path for r in train_set.records), rule)
    train_loader = DataLoader(
        SeededDataset(train_set),
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        generator=torch.Generator().manual_seed(spec.train.seed),
        **loader_kwargs,
    )
    val_loader = None
    if spec.dataset.val.images:
        val_set = build_dataset(
            spec.dataset,
            "val",
            label_map,
            text_list_len=texts,
            size_divisibility=divisibility,
            task_text=spec.model.task_text,
            train=False,
            intensity=train_set.intensity,
            tokens=False,
        )
        # every image once over all processes: no padding, so none is counted twice
        val_sampler = EpochSampler(len(val_set), shuffle=False, world_size=world_size, pad=False)
        val_loader = DataLoader(
            SeededDataset(val_set),
            batch_size=spec.evaluate.batch_size,
            sampler=val_sampler,
            **loader_kwargs,
        )
    return train_loader, val_loader, sampler, [val_sampler] if val_loader is not None else []


def monitor_callback(
    spec, run, has_validation: bool, val_tasks: list[str] | None = None
) -> BestCheckpoint | None:
    """The model_best.ckpt keeper of `train.monitor`; None (with a status line saying why)
    when that metric is never computed because there is no validation set.

    val_tasks: the tasks validation runs (those of `evaluate.tasks` the model does). A
    Mask2Former model whose mode does not give the monitored metric is monitored on its
    mode's metric instead, with a status line saying so."""
    monitor = spec.train.monitor
    task = MONITOR_TASK[monitor]
    validated = list(val_tasks) if val_tasks is not None else list(spec.evaluate.tasks)
    if task is not None and spec.model.arch == "mask2former" and task not in validated:
        own = spec.model.mode if spec.model.mode in validated else validated[0]
        metric = {"panoptic": "pq", "instance": "ap", "semantic": "miou"}[own]
        run.log(
            "RUNNING",
            message=f"warning: train.monitor is {monitor!r}, but this mask2former model "
            f"({spec.model.mode} mode) is validated on {', '.join(validated)}: monitoring "
            f"{metric!r}",
        )
        monitor, task = metric, own
    if task is not None and task not in validated:
        raise ValueError(
            f"train.monitor: got {monitor!r}, which needs {task!r} in evaluate.tasks "
            f"(got {list(spec.evaluate.tasks)})"
        )
    if task is not None and not has_validation:
        run.log(
            "RUNNING",
            message=f"warning: train.monitor is {monitor!r} but dataset.val is empty: no "
            f"{BEST} is kept (train.monitor=loss needs no validation)",
        )
        return None
    return BestCheckpoint(run.dir, monitor, spec.train.early_stop_patience, run)


def run_train(spec, run, callbacks: list | tuple = (), progress_bar: bool = True) -> None:
    """Train as the spec says, writing into `run.dir`. `callbacks`: extra Lightning callbacks
    (the AutoML search adds one that reports validation metrics to its trial)."""
    quiet_lightning()
    L.seed_everything(spec.train.seed, workers=True, verbose=False)
    torch.backends.cudnn.deterministic = spec.train.cudnn_deterministic
    torch.backends.cudnn.benchmark = spec.train.cudnn_benchmark
    spec = with_unpacked_archives(spec)
    label_map = model_label_map(spec.dataset)
    num_classes = spec.model.num_classes or len(label_map)
    if num_classes != len(label_map):
        hint = ""
        if num_classes == 1:
            hint = " (for one class of every thing, set dataset.single_class, e.g. object)"
        raise ValueError(
            f"model.num_classes: got {num_classes}, but the dataset has {len(label_map)} "
            f"classes{hint}"
        )
    warning = random_backbone_warning(spec)
    if warning:
        log.warning(warning)
        run.log("RUNNING", message=f"warning: {warning}")
    devices = device_settings(spec.train)
    world = devices.pop("world_size")
    processes = spec.train.num_processes_cpu if devices["accelerator"] == "cpu" else 1
    set_intra_op_threads(spec.cpu_threads, spec.dataset.workers, processes)
    model = build_model_for_training(spec, num_classes)
    criterion = build_criterion(spec.model.loss, num_classes, spec.model.arch)
    train_loader, val_loader, sampler, val_samplers = build_loaders(spec, label_map, world)

    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError(
            f"dataset.batch_size: got {spec.dataset.batch_size}, larger than the training set "
            f"share of each process ({len(sampler)} images)"
        )
    total_steps = steps_per_epoch * spec.train.num_epochs
    if spec.train.max_steps > 0:
        total_steps = min(total_steps, spec.train.max_steps)
    val_tasks, _ = supported_tasks(spec.model, list(spec.evaluate.tasks))
    best = monitor_callback(spec, run, val_loader is not None, val_tasks)
    evaluator_factory = None
    if val_loader is not None:
        val_set = val_loader.dataset.dataset

        def evaluator_factory():
            return Evaluator(val_set, label_map, val_tasks)

    module = SegmentationModule(
        model=model,
        criterion=criterion,
        optim_cfg=spec.train.optim,
        total_steps=total_steps,
        model_cfg=spec.model,
        label_map=label_map,
        evaluator_factory=evaluator_factory,
        intensity=train_loader.dataset.dataset.intensity.to_dict(),
    )
    folder = Path(run.dir)
    resume = spec.train.resume_training_checkpoint_path or latest_checkpoint(folder)
    if resume:
        check_resumable(resume, spec.model, label_map)
        run.log("RUNNING", message=f"resuming from {resume}")
    checkpoint = AtomicCheckpoint(
        folder, spec.train.checkpoint_interval, spec.train.checkpoint_interval_unit
    )
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    trainer = L.Trainer(
        **devices,
        max_epochs=spec.train.num_epochs,
        max_steps=spec.train.max_steps,
        gradient_clip_val=spec.train.clip_grad_norm or None,
        gradient_clip_algorithm="norm",
        check_val_every_n_epoch=spec.train.validation_interval,
        num_sanity_val_steps=0,
        limit_val_batches=None if val_loader is not None else 0,
        # no longer than an epoch: Lightning warns otherwise, and would log nothing per epoch
        log_every_n_steps=min(spec.train.log_every_n_steps, steps_per_epoch),
        enable_checkpointing=False,
        use_distributed_sampler=False,
        sync_batchnorm=has_bn and world > 1,
        callbacks=[
            # first: a checkpoint saved by a later callback must count the batch just done
            SamplerSetup(sampler, spec.dataset.batch_size, val_samplers),
            checkpoint,
            StatusCallback(run, spec.train.log_every_n_steps),
            WeightSyncCheck(run),
            *([best] if best is not None else []),
            *callbacks,
        ],
        logger=[
            TensorBoardLogger(folder, name="tensorboard", version=""),
            CSVLogger(folder, name="csv", version=""),
        ],
        default_root_dir=folder,
        enable_model_summary=False,
        enable_progress_bar=progress_bar,
    )
    run.log(
        "RUNNING",
        message=f"training {steps_per_epoch} steps/epoch x {spec.train.num_epochs} epochs "
        f"on {world} process(es)",
    )
    # weights_only: a planted checkpoint must not run code, whatever torch's default
    trainer.fit(
        module,
        train_loader,
        val_loader,
        ckpt_path=str(resume) if resume else None,
        weights_only=True,
    )
    run.kpis["skipped_samples"] = train_loader.dataset.dataset.skipped
    run.kpis.update({k: v for k, v in module.last_metrics.items() if isinstance(v, (int, float))})
    run.kpis["steps"] = trainer.global_step
    run.kpis["final_loss"] = float(trainer.callback_metrics.get("loss", math.nan))
    if trainer.is_global_zero:
        print(f"train: last checkpoint {latest_checkpoint(folder)}")
