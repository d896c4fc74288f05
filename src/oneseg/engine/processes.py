"""Several processes for `evaluate` and `inference`, started as `oneseg train` starts them.

The spec keys are train's: `num_gpus` / `gpu_ids` (one process per GPU, NCCL), or
`num_processes_cpu` (gloo), times `num_nodes`. The launch follows Lightning's conventions,
through its cluster environments: on each node the process started by hand runs the same
command again for local ranks 1..N-1 (LOCAL_RANK set), with MASTER_ADDR (default 127.0.0.1),
MASTER_PORT (a free port when unset), NODE_RANK (default 0) and WORLD_SIZE; processes started by
torchrun or SLURM are taken as they are.

Lightning's own launcher is not used here because it kills the main process (SIGKILL) when a
child dies; a run that loses a process must still write its FAILURE line, keep what was done
and say in one line which process stopped. So the main process watches its children itself
(`Processes.step`, after each batch) and a collective that fails names the lost process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from oneseg.errors import RunFailed

# Fault injection for tests: "RANK:IMAGES" makes that global rank exit at once (no clean-up,
# as a killed process) once it has done that many images.
FAULT_ENV = "ONESEG_FAULT_EXIT"
FAULT_EXIT_CODE = 70
_LAUNCH_KEYS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class ProcessPlan:
    """How many processes an action runs on, and where.

    Attributes:
        action: `evaluate` or `inference`, for messages and spec keys.
        use_gpu: one process per GPU (NCCL), else CPU processes (gloo).
        per_node: processes on each node.
        num_nodes: nodes.
        gpu_ids: the GPU of each local rank (on GPUs), else empty.
    """

    action: str
    use_gpu: bool
    per_node: int
    num_nodes: int
    gpu_ids: tuple[int, ...] = ()

    @property
    def world_size(self) -> int:
        return self.per_node * self.num_nodes

    @property
    def cpu_processes(self) -> int:
        """Processes sharing this node's cores (for the thread count)."""
        return 1 if self.use_gpu else self.per_node


def process_layout(cfg) -> tuple[bool, list[int] | int, int]:
    """(on GPUs, Lightning's `devices`: GPU ids or a count, processes per node) of a spec
    section with accelerator, num_gpus, gpu_ids and num_processes_cpu (train, evaluate,
    inference): `gpu_ids` name the GPUs when they list at least `num_gpus` of them."""
    use_gpu = cfg.accelerator == "gpu" or (cfg.accelerator == "auto" and torch.cuda.is_available())
    if use_gpu:
        ids = cfg.gpu_ids[: cfg.num_gpus]
        return True, ids if len(ids) == cfg.num_gpus else cfg.num_gpus, cfg.num_gpus
    return False, cfg.num_processes_cpu, cfg.num_processes_cpu


def plan_processes(cfg, action: str) -> ProcessPlan:
    """The plan of a spec section (`spec.evaluate` or `spec.inference`)."""
    use_gpu, devices, per_node = process_layout(cfg)
    if use_gpu and not torch.cuda.is_available():
        raise ValueError(f"{action}.accelerator: got 'gpu', but no CUDA GPU is visible")
    gpu_ids: tuple[int, ...] = ()
    if use_gpu:
        gpu_ids = tuple(devices) if isinstance(devices, list) else tuple(range(devices))
    return ProcessPlan(action, use_gpu, per_node, cfg.num_nodes, gpu_ids)


def check_exported_on_gpus(opened, plan: ProcessPlan) -> None:
    """Refuse an exported model on several GPU processes per node or on another GPU than the
    first: ONNX Runtime and TensorRT take the node's first GPU."""
    if opened.model is None and plan.use_gpu and (plan.per_node > 1 or plan.gpu_ids[0] != 0):
        raise ValueError(
            f"{plan.action}.num_gpus / gpu_ids: an exported model runs on the first GPU of "
            f"each node; run the checkpoint on other or several GPUs, or set "
            f"{plan.action}.num_gpus=1 and gpu_ids=[0]"
        )


def strided_shard(length: int, rank: int, world_size: int) -> list[int]:
    """Indices rank, rank + world_size, ... of `length`: each index in exactly one shard, no
    padding (shares differ by at most one)."""
    return list(range(rank, length, world_size))


@dataclass
class Processes:
    """This process's place in the run and the few collectives the actions need.

    Attributes:
        plan: the plan the run was started with.
        rank, world_size, local_rank: global rank, process count, rank on this node.
        device: the device this process runs its model on.
        children: the processes this one started (local ranks 1.. of the main process).
        parent: the process that started this one (0: none of ours), watched in `step`.
        done: images this process has done (for the test hook of `FAULT_ENV`).
    """

    plan: ProcessPlan
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    children: list[subprocess.Popen] = field(default_factory=list)
    parent: int = 0
    done: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, length: int) -> list[int]:
        """This process's indices of `length` items."""
        return strided_shard(length, self.rank, self.world_size)

    def step(self, images: int) -> None:
        """After each batch (`images` done by this process in it): fail at once when another
        process of this node has died (or the test hook says this one dies now)."""
        self.done += images
        fault = os.environ.get(FAULT_ENV, "")
        if fault:
            rank, _, after = fault.partition(":")
            if int(rank) == self.rank and self.done >= int(after or 0):
                os._exit(FAULT_EXIT_CODE)
        if self.parent and os.getppid() != self.parent:
            raise RunFailed(f"{self.plan.action}: the main process (rank 0) stopped")
        failed = self._failed_child()
        if failed:
            raise RunFailed(failed)

    def gather(self, value) -> list | None:
        """Every process's `value` on rank 0 (in rank order), None elsewhere."""
        if self.world_size == 1:
            return [value]
        out = [None] * self.world_size if self.is_main else None
        self._collective(lambda: dist.gather_object(value, out, dst=0))
        return out

    def broadcast(self, value):
        """Rank 0's `value` on every process."""
        if self.world_size == 1:
            return value
        box = [value if self.is_main else None]
        self._collective(lambda: dist.broadcast_object_list(box, src=0))
        return box[0]

    def _collective(self, call) -> None:
        try:
            call()
        except (RuntimeError, ValueError) as err:  # gloo / NCCL: a process is gone
            deadline = time.time() + 3.0
            while time.time() < deadline and self.children:
                failed = self._failed_child()
                if failed:
                    raise RunFailed(failed) from None
                time.sleep(0.1)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise RunFailed(
                f"{self.plan.action}: another process of the run stopped ({first}); "
                f"{_rerun_hint(self.plan.action)}"
            ) from None

    def _failed_child(self) -> str:
        for local, proc in enumerate(self.children, 1):
            code = proc.poll()
            if code:
                rank = self.rank + local
                return (
                    f"{self.plan.action}: process {rank} of {self.world_size} exited with code "
                    f"{code} before finishing; {_rerun_hint(self.plan.action)}"
                )
        return ""

    def stop_children(self) -> None:
        """Terminate (SIGTERM, then SIGKILL after 5 s) the children still running."""
        running = [p for p in self.children if p.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.time() + 5.0
        for proc in running:
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def wait_children(self, timeout: float = 300.0) -> None:
        """Wait for the children to end (their work is done: stopped after `timeout` s); a
        child that ended badly fails the run."""
        deadline = time.time() + timeout
        for proc in self.children:
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                self.stop_children()
                return
        failed = self._failed_child()
        if failed:
            raise RunFailed(failed)


def _rerun_hint(action: str) -> str:
    if action == "inference":
        return "run the same command again to do the images still missing"
    return "run the same command again"


def _child_command(action: str) -> list[str]:
    """The command line this process was started with, to run again for the other ranks."""
    import __main__

    spec = getattr(__main__, "__spec__", None)
    if spec is not None and spec.name in ("oneseg.cli", "oneseg"):
        return [sys.executable, "-m", spec.name, *sys.argv[1:]]
    if spec is None and os.path.basename(sys.argv[0]).startswith("oneseg"):
        return [sys.executable, os.path.abspath(sys.argv[0]), *sys.argv[1:]]
    raise ValueError(
        f"{action}.num_processes_cpu / num_gpus: several processes are started by running "
        "the `oneseg` command again; from Python, start the processes yourself (torchrun) or "
        "use the command"
    )


def _cluster_environment():
    from lightning.fabric.plugins.environments import (
        LightningEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    for environment in (TorchElasticEnvironment, SLURMEnvironment):
        if environment.detect():
            return environment()
    return LightningEnvironment()


@contextmanager
def launched(plan: ProcessPlan) -> Iterator[Processes]:
    """This process's `Processes` in a run of `plan`: one process when the plan says one,
    else the others started (on the main process of each node) and a process group joined;
    on leaving, the group is left and the children are waited for (stopped on an error)."""
    environment = _cluster_environment() if plan.world_size > 1 else None
    if environment is None:
        device = torch.device(f"cuda:{plan.gpu_ids[0]}" if plan.use_gpu else "cpu")
        if plan.use_gpu:
            torch.cuda.set_device(device)
        yield Processes(plan, device=device)
        return
    saved = {key: os.environ.get(key) for key in _LAUNCH_KEYS}
    processes = _start(plan, environment)
    try:
        yield processes
        if processes.children:
            processes.wait_children()
    except BaseException:
        processes.stop_children()
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _start(plan: ProcessPlan, environment) -> Processes:
    """Start this node's other processes (when this one was started by hand) and join the
    process group."""
    children: list[subprocess.Popen] = []
    parent = 0
    if environment.creates_processes_externally:
        world, rank = _external_ranks(plan, environment)
        if world != plan.world_size:
            raise ValueError(
                f"{plan.action}: the launcher started {world} processes (WORLD_SIZE), the spec "
                f"asks for {plan.world_size} ({plan.action}.num_nodes x num_gpus or "
                "num_processes_cpu)"
            )
        parent = os.getppid() if environment.local_rank() > 0 else 0
    else:
        rank = environment.node_rank() * plan.per_node
        os.environ.update(
            MASTER_ADDR=environment.main_address,
            MASTER_PORT=str(environment.main_port),
            NODE_RANK=str(environment.node_rank()),
            LOCAL_RANK="0",
            WORLD_SIZE=str(plan.world_size),
        )
        command = _child_command(plan.action)
        for local in range(1, plan.per_node):
            env = dict(os.environ, LOCAL_RANK=str(local))
            children.append(subprocess.Popen(command, env=env))
    local_rank = environment.local_rank()
    os.environ["MASTER_ADDR"] = environment.main_address
    os.environ["MASTER_PORT"] = str(environment.main_port)
    device = torch.device("cpu")
    if plan.use_gpu:
        device = torch.device("cuda", plan.gpu_ids[local_rank])
        torch.cuda.set_device(device)
    processes = Processes(plan, rank, plan.world_size, local_rank, device, children, parent)
    try:
        _join_group(processes, "nccl" if plan.use_gpu else "gloo")
    except BaseException:
        processes.stop_children()
        raise
    return processes


def _external_ranks(plan: ProcessPlan, environment) -> tuple[int, int]:
    """(world size, global rank) of a process that a launcher started: from the environment
    variables of Lightning's convention (LOCAL_RANK, NODE_RANK, WORLD_SIZE), else from
    torchrun's or SLURM's."""
    from lightning.fabric.plugins.environments import LightningEnvironment

    if isinstance(environment, LightningEnvironment):
        world = int(os.environ.get("WORLD_SIZE", plan.world_size))
        return world, environment.node_rank() * plan.per_node + environment.local_rank()
    return environment.world_size(), environment.global_rank()


def _join_group(processes: Processes, backend: str) -> None:
    """Join the process group, failing at once (not after the rendezvous timeout) when a
    child started here dies before it joins."""
    errors: list[BaseException] = []

    def join() -> None:
        try:
            dist.init_process_group(
                backend,
                rank=processes.rank,
                world_size=processes.world_size,
                timeout=timedelta(minutes=30),
            )
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            errors.append(err)

    thread = threading.Thread(target=join, name="join-process-group", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
        failed = processes._failed_child()
        if failed and thread.is_alive():
            raise RunFailed(failed)
    if errors:
        raise errors[0]


def open_section_model(spec, section: str, run, processes: Processes):
    """The model that `section` ("evaluate" or "inference") of the spec names (its
    `onnx_file` or `trt_engine`, else its `checkpoint`, else `model.pretrained`), opened once on
    this process's device in the section's precision (`oneseg.runner.open_model`)."""
    from oneseg.precision import log_precision, precision_setting
    from oneseg.runner import is_exported, open_model

    cfg = getattr(spec, section)
    source = cfg.onnx_file or cfg.trt_engine or cfg.checkpoint or spec.model.pretrained
    if not source:
        raise ValueError(
            f"{section}.checkpoint is empty (and model.pretrained, {section}.onnx_file and "
            f"{section}.trt_engine too): name a model"
        )
    key = f"{section}.checkpoint"
    if cfg.onnx_file or cfg.trt_engine:
        key = f"{section}.onnx_file" if cfg.onnx_file else f"{section}.trt_engine"
    exported = bool(cfg.onnx_file or cfg.trt_engine) or is_exported(source)
    precision = precision_setting(
        cfg.precision, processes.device, f"{section}.precision", exported=exported
    )
    opened = open_model(
        str(source),
        list(cfg.tasks),
        device=processes.device,
        spec_model=spec.model,
        key=key,
        precision=precision,
    )
    log_precision(run, cfg.precision, getattr(opened.runner, "precision", None))
    check_exported_on_gpus(opened, processes.plan)
    return opened
