"""The `gen_trt_engine` action and `TensorRTEngine`: an exported ONNX file built into a TensorRT
engine, and run by evaluate / inference / `Predictor` like an ONNX file.

Everything up to the TensorRT calls is plain Python and tested anywhere: the build plan
(optimisation profile, precision, the layers kept in FP32), the sidecar, the version check of an
engine. The build and the run need the `tensorrt` package and a CUDA GPU; without either, one
line says which is missing.

In FP16 the layers whose values overflow or lose their meaning at 16 bits stay FP32: the
export wrapper (normalisation and every post-processing step: scores, thresholds, areas) and
the reductions, powers, square roots and normalisations of the network (sums of squares
overflow 65504 long before the values themselves do).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from oneseg.export.qdq import calibration_images, is_network_node
from oneseg.export.runtime import ExportedEngine, read_description
from oneseg.export.tensorrt_calibrator import make_calibrator
from oneseg.io import write_atomic, write_json_atomic

FP32_OPS = {
    "ReduceSum",
    "ReduceMean",
    "Pow",
    "Sqrt",
    "LayerNormalization",
    "InstanceNormalization",
    "Softmax",
    "Exp",
}
ENGINE_SUFFIXES = (".engine", ".trt", ".plan")


class TensorRTUnavailable(ValueError):
    """TensorRT or a CUDA GPU is missing; the message says which."""


def require_tensorrt():
    """The `tensorrt` module, when it and a CUDA GPU are there; else one clear error."""
    try:
        import tensorrt
    except ImportError:
        raise TensorRTUnavailable(
            "TensorRT is not installed: the `tensorrt` Python package is missing "
            "(pip install tensorrt, on a machine with a CUDA GPU)"
        ) from None
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("no CUDA GPU is visible: TensorRT engines build and run on one")
    return tensorrt


@dataclass
class BuildPlan:
    """What `build_engine` asks of TensorRT, decided from the spec and the ONNX file."""

    onnx_file: Path
    engine_file: Path
    data_type: str
    workspace_mib: int
    # input shapes of the optimisation profile: [B, 3, H, W] each
    min_shape: tuple[int, int, int, int]
    opt_shape: tuple[int, int, int, int]
    max_shape: tuple[int, int, int, int]
    fp32_layers: list[str] = field(default_factory=list)
    calibration_images: list[Path] = field(default_factory=list)
    calibration_cache: Path | None = None


def fp32_layers(proto) -> list[str]:
    """ONNX node names to keep in FP32 in a reduced-precision engine (module docstring)."""
    return sorted(
        node.name
        for node in proto.graph.node
        if node.op_type in FP32_OPS or not is_network_node(node)
    )


def build_plan(spec, run_dir: str | Path) -> BuildPlan:
    """The plan for `gen_trt_engine` (checks the ONNX file and the batch sizes)."""
    import onnx

    cfg = spec.gen_trt_engine
    trt = cfg.tensorrt
    if not cfg.onnx_file:
        raise ValueError("gen_trt_engine.onnx_file is empty: name the ONNX file of oneseg export")
    onnx_file = Path(cfg.onnx_file)
    description = read_description(onnx_file)
    if "quantization" in description:
        raise ValueError(
            f"{onnx_file}: a QDQ INT8 file; give TensorRT the float export and "
            "gen_trt_engine.tensorrt.data_type=int8"
        )
    if not trt.min_batch_size <= trt.opt_batch_size <= trt.max_batch_size:
        raise ValueError(
            "gen_trt_engine.tensorrt: need min_batch_size <= opt_batch_size <= max_batch_size, "
            f"got {trt.min_batch_size}, {trt.opt_batch_size}, {trt.max_batch_size}"
        )
    size = description["input"]
    fixed = size["batch_size"]
    if fixed != -1 and not trt.min_batch_size == trt.max_batch_size == fixed:
        raise ValueError(
            f"{onnx_file}: exported for batches of {fixed}; set gen_trt_engine.tensorrt."
            f"min/opt/max_batch_size to {fixed} or export with export.batch_size=-1"
        )
    height, width = size["height"], size["width"]
    engine_file = Path(cfg.trt_engine or Path(run_dir) / "model.engine")
    plan = BuildPlan(
        onnx_file=onnx_file,
        engine_file=engine_file,
        data_type=trt.data_type,
        workspace_mib=trt.workspace_size,
        min_shape=(trt.min_batch_size, 3, height, width),
        opt_shape=(trt.opt_batch_size, 3, height, width),
        max_shape=(trt.max_batch_size, 3, height, width),
    )
    if trt.data_type != "fp32":
        plan.fp32_layers = fp32_layers(onnx.load(str(onnx_file), load_external_data=False))
    if trt.data_type == "int8":
        cache = Path(trt.calibration_cache) if trt.calibration_cache else None
        plan.calibration_cache = cache
        if cache is None or not cache.is_file():
            plan.calibration_images = calibration_images(
                spec.dataset.quant_calibration_dataset.images_dir, trt.calibration_images
            )
    return plan


def engine_description(onnx_description: dict, plan: BuildPlan, trt_version: str) -> dict:
    """The engine's sidecar: the ONNX description plus how and with what it was built."""
    description = dict(onnx_description)
    description["tensorrt"] = {
        "version": trt_version,
        "data_type": plan.data_type,
        "onnx_file": str(plan.onnx_file),
        "profile": {"min": plan.min_shape, "opt": plan.opt_shape, "max": plan.max_shape},
        "fp32_layers": len(plan.fp32_layers),
    }
    description["input"] = dict(description["input"], batch_size=-1)
    if plan.min_shape[0] == plan.max_shape[0]:
        description["input"]["batch_size"] = plan.min_shape[0]
    return description


def sidecar_of(engine_file: Path) -> Path:
    return engine_file.with_suffix(".json")


def read_engine_description(path: str | Path, installed_version: str | None) -> dict:
    """The sidecar of an engine file, checked against the TensorRT version at hand."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: TensorRT engine not found")
    sidecar = sidecar_of(path)
    if not sidecar.is_file():
        from oneseg.export.tao_onnx import tao_engine_refusal  # what a TAO engine would need

        raise ValueError(tao_engine_refusal(path, sidecar))
    try:
        description = json.loads(sidecar.read_text())
        built_with = description["tensorrt"]["version"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{sidecar}: not a oneseg engine description") from None
    if installed_version is not None and built_with != installed_version:
        raise ValueError(
            f"{path}: built with TensorRT {built_with}, this is TensorRT {installed_version}; "
            "an engine runs only on the version that built it: rebuild with oneseg gen_trt_engine"
        )
    return description


def engine_task_files(path: str | Path) -> dict[str, Path]:
    """task -> engine file: the file, and siblings named NAME_task.engine."""
    path = Path(path)
    files = {read_engine_description(path, None)["task"]: path}
    for task in ("semantic", "instance", "panoptic"):
        if path.stem.endswith(f"_{task}"):
            base = path.stem[: -len(task) - 1]
            for other in ("semantic", "instance", "panoptic"):
                sibling = path.with_name(f"{base}_{other}{path.suffix}")
                if other not in files and sibling.is_file() and sidecar_of(sibling).is_file():
                    files[other] = sibling
    return files


def build_engine(plan: BuildPlan, trt) -> bytes:
    """Serialized engine of `plan` (TensorRT 10 API)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(plan.onnx_file.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"{plan.onnx_file}: TensorRT cannot parse it ({errors})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mib << 20)
    profile = builder.create_optimization_profile()
    profile.set_shape("images", plan.min_shape, plan.opt_shape, plan.max_shape)
    config.add_optimization_profile(profile)
    if plan.data_type in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        keep = set(plan.fp32_layers)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.name in keep or any(layer.name.startswith(f"{k}_") for k in keep):
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    if layer.get_output(j).dtype in (trt.float16, trt.float32):
                        layer.set_output_type(j, trt.float32)
    if plan.data_type == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = make_calibrator(trt, plan)
        config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ValueError(f"{plan.onnx_file}: TensorRT could not build an engine (see its log)")
    return bytes(serialized)


def run_gen_trt_engine(spec, run) -> None:
    plan = build_plan(spec, run.dir)
    trt = require_tensorrt()
    run.log("RUNNING", f"building a {plan.data_type} TensorRT engine from {plan.onnx_file}")
    serialized = build_engine(plan, trt)
    write_atomic(plan.engine_file, lambda tmp: tmp.write_bytes(serialized))
    description = engine_description(read_description(plan.onnx_file), plan, trt.__version__)
    write_json_atomic(sidecar_of(plan.engine_file), description)
    run.kpis["engine_mb"] = round(plan.engine_file.stat().st_size / 2**20, 2)
    print(f"gen_trt_engine: wrote {plan.engine_file} (TensorRT {trt.__version__})")


class TensorRTEngine(ExportedEngine):
    """A TensorRT engine of `oneseg gen_trt_engine`, run on the GPU with torch buffers."""

    def __init__(self, path: str | Path):
        trt = require_tensorrt()
        import torch

        self.path = Path(path)
        self.description = read_engine_description(self.path, trt.__version__)
        self._read_description()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ValueError(f"{self.path}: TensorRT cannot load this engine")
        self.context = self.engine.create_execution_context()
        self.output_names = list(self.description["outputs"])
        self._torch = torch

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        inputs = torch.from_numpy(np.ascontiguousarray(images, np.uint8)).cuda()
        self.context.set_input_shape("images", tuple(inputs.shape))
        self.context.set_tensor_address("images", inputs.data_ptr())
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = _torch_dtype(self.engine.get_tensor_dtype(name), torch)
            outputs[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ValueError(f"{self.path}: TensorRT execution failed")
        stream.synchronize()
        return {name: value.cpu().numpy() for name, value in outputs.items()}


def _torch_dtype(trt_dtype, torch):
    name = str(trt_dtype).rsplit(".", 1)[-1].lower()
    return {
        "float": torch.float32,
        "half": torch.float16,
        "int32": torch.int32,
        "int64": torch.int64,
        "bool": torch.bool,
        "uint8": torch.uint8,
        "int8": torch.int8,
    }[name]
