"""The experiment spec: one typed schema for every action.

Each field carries its meaning in ``help`` and, where it has one, its range (``ge``/``le``/``gt``).
`oneseg.spec` loads YAML and dotted overrides into these dataclasses, refusing unknown keys,
wrong types and values out of range; it also renders the commented template and the JSON Schema.
Defaults follow the published OneFormer configs. Counts mean what they say.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from oneseg.constants import IGNORE, TASKS

ACTIONS = (
    "train", "evaluate", "inference", "export", "gen_trt_engine", "quantize", "automl", "push",
    "serve",
)  # fmt: skip
Task = Literal["semantic", "instance", "panoptic"]
Precision = Literal["fp32", "bf16", "fp16", "auto"]
PRECISION_HELP = (
    "forward precision of a checkpoint (docs/precision.md); auto = bf16 on a CPU with "
    "AVX512-BF16 or AMX, bf16 (fp16 where unsupported) on CUDA, else fp32"
)


def f(default, help: str, **bounds):
    """A dataclass field with a help text and optional numeric bounds (ge, le, gt)."""
    meta = {"help": help, **bounds}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def arch_f(default, help: str, **bounds):
    """`f` for a setting that shapes the network: weights of one value do not fit another, so
    a training folder of another value is refused (`ARCHITECTURE_KEYS`)."""
    return f(default, help, architecture=True, **bounds)


def sub(cls, help: str, architecture: bool = False):
    meta = {"help": help, "architecture": True} if architecture else {"help": help}
    return field(default_factory=cls, metadata=meta)


@dataclass
class PixelDecoderConfig:
    conv_dim: int = f(256, "channels of the pixel decoder", ge=1)
    mask_dim: int = f(256, "channels of the mask features", ge=1)
    enc_layers: int = f(6, "deformable-attention encoder layers", ge=0)
    enc_heads: int = f(8, "attention heads in the encoder", ge=1)
    enc_points: int = f(4, "sampling points per head, level and query", ge=1)
    enc_ffn_dim: int = f(1024, "hidden width of the encoder feed-forward", ge=1)
    dropout: float = f(0.1, "dropout in the encoder (active only in training)", ge=0.0, le=1.0)
    norm_groups: int = f(32, "GroupNorm groups of the FPN convolutions", ge=1)


@dataclass
class TextEncoderConfig:
    width: int = f(256, "width of the CLIP-style text transformer", ge=1)
    layers: int = f(6, "layers of the text transformer", ge=1)
    context_length: int = f(77, "token sequence length of each text entry", ge=2)
    n_ctx: int = f(16, "learned context embeddings appended to the text list", ge=0)
    proj_layers: int = f(2, "layers of the text projector MLP", ge=1)
    vocab_size: int = f(49408, "CLIP BPE vocabulary size", ge=1)


@dataclass
class LossConfig:
    class_weight: float = f(2.0, "weight of the classification loss", ge=0.0)
    mask_weight: float = f(5.0, "weight of the point-sampled mask BCE", ge=0.0)
    dice_weight: float = f(5.0, "weight of the point-sampled dice loss", ge=0.0)
    contrastive_weight: float = f(0.5, "weight of the query-text contrastive loss", ge=0.0)
    contrastive_temperature: float = f(0.07, "initial temperature of the contrastive loss", gt=0.0)
    no_object_weight: float = f(0.1, "class weight of the no-object class", ge=0.0)
    train_num_points: int = f(12544, "points sampled per mask for matching and losses", ge=1)
    oversample_ratio: float = f(3.0, "oversampling of candidate points", ge=1.0)
    importance_sample_ratio: float = f(
        0.75, "share of points taken where uncertain", ge=0.0, le=1.0
    )
    deep_supervision: bool = f(True, "supervise the prediction after every decoder layer")


@dataclass
class ModelConfig:
    arch: Literal["oneformer", "mask2former"] = arch_f(
        "oneformer", "oneformer (task token + text branch) or mask2former (neither)"
    )
    mode: Task = f(
        "panoptic",
        "mask2former: the one task it trains on and is evaluated for (a panoptic model also "
        "gives instance and semantic results); oneformer ignores it (dataset.task_prob)",
    )
    backbone: str = arch_f(
        "swin_tiny",
        "backbone name: swin_tiny|swin_small|swin_base|swin_large|convnext_tiny|convnext_small|"
        "convnext_base|convnext_large|resnet50|efficientnet_b0|efficientnet_lite0|dinat_tiny|"
        "dinat_small|dinat_base|dinat_large",
    )
    backbone_embed_dim: int = arch_f(
        0, "swin/convnext: width of the first stage (doubles per stage); 0 = the named size's", ge=0
    )
    backbone_depths: list[int] = arch_f(
        [], "swin/convnext: blocks per stage; [] = the named size's"
    )
    backbone_num_heads: list[int] = arch_f(
        [], "swin: attention heads per stage; [] = the named size's"
    )
    backbone_window_size: int = arch_f(
        0, "swin: attention window; dinat: neighbourhood size; 0 = the named size's", ge=0
    )
    backbone_dilations: list[list[int]] = f(
        [], "dinat: dilation of each block, per stage; [] = the named size's"
    )
    drop_path_rate: float = f(
        -1.0,
        "stochastic depth of the backbone (training only); -1 = the backbone's default: 0.3 for "
        "swin/convnext/dinat, 0 for resnet/efficientnet (as the original)",
        ge=-1.0,
        le=1.0,
    )
    backbone_frozen_bn: bool = f(
        True,
        "resnet/efficientnet: BatchNorm frozen at its loaded statistics and affine (as the "
        "original); false trains it (synchronised across processes)",
    )
    pretrained: str = f(
        "",
        "weights to start from: our checkpoint, a transformers OneFormer/Mask2Former folder or a "
        "hub name hf://ORG/NAME[@REVISION]",
    )
    num_classes: int = arch_f(
        0, "classes without no-object; 0 takes the count from dataset.label_map", ge=0
    )
    hidden_dim: int = arch_f(256, "width of the transformer decoder", ge=1)
    num_queries: int = arch_f(150, "queries, the task token included", ge=2)
    nheads: int = arch_f(8, "attention heads of the transformer decoder", ge=1)
    dim_feedforward: int = arch_f(2048, "feed-forward width of the transformer decoder", ge=1)
    dec_layers: int = arch_f(9, "masked-attention decoder layers", ge=1)
    query_dec_layers: int = arch_f(2, "layers of the query transformer", ge=1)
    query_dropout: float = f(
        0.1, "dropout in the query transformer (active only in training)", ge=0.0, le=1.0
    )
    dropout: float = f(0.0, "dropout in the masked-attention decoder layers", ge=0.0, le=1.0)
    pre_norm: bool = arch_f(False, "pre-norm decoder layers")
    enforce_input_proj: bool = arch_f(False, "always project decoder inputs, even at equal width")
    task_seq_len: int = arch_f(77, "CLIP token ids of the task text", ge=2)
    task_text: str = f(
        "The task is {task}",
        "task prompt of the task token, {task} standing for semantic/instance/panoptic; the "
        "task MLP reads its token ids, so it must be the one the weights were trained with "
        "(NV-OneFormer: 'This task is {task}.')",
        contains="{task}",
    )
    size_divisibility: int = f(32, "pad images to a multiple of this", ge=1)
    pixel_mean: list[float] = f([123.675, 116.28, 103.53], "RGB mean on the 0-255 scale")
    pixel_std: list[float] = f([58.395, 57.12, 57.375], "RGB std on the 0-255 scale")
    object_mask_threshold: float = f(
        0.8, "panoptic/instance: keep queries scoring above", ge=0.0, le=1.0
    )
    overlap_threshold: float = f(
        0.8, "panoptic: keep a segment if this share survives overlap", ge=0.0, le=1.0
    )
    test_topk_per_image: int = f(150, "instance: detections kept per image", ge=1)
    pixel_decoder: PixelDecoderConfig = sub(
        PixelDecoderConfig, "multi-scale pixel decoder", architecture=True
    )
    text_encoder: TextEncoderConfig = sub(
        TextEncoderConfig, "training-only text branch", architecture=True
    )
    loss: LossConfig = sub(LossConfig, "loss weights and point sampling")


@dataclass
class DataSource:
    images: str = f("", "folder of images, or a .tar/.tar.gz of them (unpacked once)")
    annotations: str = f("", "COCO panoptic or instance JSON")
    panoptic: str = f("", "folder of panoptic PNGs (coco_panoptic)")
    labels: str = f("", "folder of label PNGs (semantic)")


@dataclass
class AugmentationConfig:
    train_min_size: list[int] = f([512], "shortest-edge sizes to choose from in training")
    train_max_size: int = f(2048, "longest edge after resize in training", ge=1)
    eval_min_size: int = f(512, "shortest edge at evaluation", ge=1)
    eval_max_size: int = f(2048, "longest edge at evaluation", ge=1)
    crop_size: list[int] = f([512, 512], "training crop [height, width]; [] for no crop")
    lsj: bool = f(False, "large-scale jitter (scale then crop) instead of shortest-edge resize")
    lsj_scale: list[float] = f([0.1, 2.0], "scale range of large-scale jitter")
    hflip: float = f(0.5, "probability of a horizontal flip", ge=0.0, le=1.0)
    color_jitter: float = f(0.2, "strength of brightness/contrast/saturation jitter", ge=0.0)
    short_edge_scale: list[float] = f(
        [],
        "[low, high]: training shortest edge = crop_size[0] x U(low, high), longest at most "
        "twice it (TAO OneFormer's min_scale/max_scale); [] = train_min_size",
    )
    eval_resize: list[int] = f(
        [],
        "[height, width]: evaluation images are first resized to this, aspect not kept (TAO "
        "OneFormer's dataset.image_size), then to eval_min_size; [] keeps the aspect",
    )


@dataclass
class IntensityConfig:
    mode: Literal["percentile", "minmax", "full_range", "fixed"] = f(
        "percentile", "window stretched to 0-255: percentiles, min-max, the type's range, fixed"
    )
    low: float = f(1.0, "percentile: lower percentile; fixed: the value that becomes 0")
    high: float = f(99.8, "percentile: upper percentile; fixed: the value that becomes 255")
    per: Literal["image", "dataset"] = f("image", "window of each image, or one over the train set")


@dataclass
class CalibrationDataConfig:
    images_dir: str = f("", "images used to calibrate INT8 quantization")


@dataclass
class DatasetConfig:
    type: Literal["coco_panoptic", "coco", "semantic", "ade"] = f(
        "coco_panoptic",
        "annotation format; ade: TAO's JSON lines of {img, segm} (a source's annotations is the "
        ".jsonl file, its images the folder the paths are relative to)",
    )
    train: list[DataSource] = field(
        default_factory=lambda: [DataSource()],
        metadata={"help": "training sources, concatenated (one mapping = one source)"},
    )
    val: DataSource = sub(DataSource, "validation source")
    test: DataSource = sub(DataSource, "test source")
    label_map: str = f("", "JSON list of {id, name, isthing, color}; default: the categories")
    single_class: str = f(
        "",
        "one class of this name (e.g. object) replaces the classes: every thing category becomes "
        "it and stuff is left unlabelled (a binary instance segmenter); '' keeps the classes",
    )
    contiguous_id: bool = f(True, "map category ids to contiguous class indices in order")
    ignore_value: int = f(IGNORE, "label of ignored pixels", ge=0)
    task_prob: dict[str, float] = f(
        {"semantic": 0.33, "instance": 0.33, "panoptic": 0.34},
        "probability of each task when sampling a training target",
    )
    text_list_len: int = f(0, "entries of each text list; 0 = num_queries - n_ctx", ge=0)
    batch_size: int = f(2, "images per batch per process", ge=1)
    workers: int = f(2, "data loader worker processes", ge=0)
    pin_memory: bool = f(True, "pin host memory for faster copies to the GPU")
    on_error: Literal["raise", "skip"] = f("raise", "a bad image stops the run or is skipped")
    intensity: IntensityConfig = sub(
        IntensityConfig, "how 16-bit, 32-bit and float images become 0-255 (8-bit: unchanged)"
    )
    max_image_pixels: int = f(
        0, "larger images (width x height) are bad images (decompression bombs); 0 = PIL's", ge=0
    )
    augmentation: AugmentationConfig = sub(AugmentationConfig, "training and eval transforms")
    quant_calibration_dataset: CalibrationDataConfig = sub(
        CalibrationDataConfig, "data for INT8 calibration"
    )


@dataclass
class OptimConfig:
    type: Literal["adamw"] = f("adamw", "optimizer")
    lr: float = f(1e-4, "base learning rate", gt=0.0)
    weight_decay: float = f(
        0.05, "weight decay (none on norms, embeddings, position tables)", ge=0.0
    )
    backbone_multiplier: float = f(0.1, "backbone learning rate = lr x this", ge=0.0)
    lr_scheduler: Literal["poly", "cosine", "multistep", "constant"] = f(
        "poly", "schedule after warmup"
    )
    poly_power: float = f(0.9, "power of the poly schedule", ge=0.0)
    milestones: list[float] = f(
        [0.889, 0.963],
        "multistep: fractions of training at which lr is multiplied by gamma",
        ge=0.0,
        le=1.0,
    )
    gamma: float = f(0.1, "multistep: lr factor at each milestone", gt=0.0, le=1.0)
    schedule_steps: int = f(
        0, "steps the schedule spans (poly/cosine reach their end there); 0 = the whole run", ge=0
    )
    warmup_steps: int = f(0, "linear warmup steps", ge=0)
    warmup_factor: float = f(1.0, "warmup starts at lr x this", gt=0.0, le=1.0)


@dataclass
class TrainConfig:
    num_gpus: int = f(1, "GPUs per node (ignored on CPU)", ge=1)
    gpu_ids: list[int] = f([0], "GPU indices to use")
    num_nodes: int = f(1, "nodes; multi-node reads WORLD_SIZE, NODE_RANK, MASTER_ADDR/PORT", ge=1)
    num_processes_cpu: int = f(1, "processes when training on CPU (DDP over gloo)", ge=1)
    accelerator: Literal["auto", "cpu", "gpu"] = f("auto", "device type")
    num_epochs: int = f(50, "training epochs", ge=1)
    max_steps: int = f(-1, "stop after this many steps; -1 = no limit", ge=-1)
    checkpoint_interval: int = f(1, "save a checkpoint every this many units", ge=1)
    checkpoint_interval_unit: Literal["epoch", "step"] = f("epoch", "unit of checkpoint_interval")
    validation_interval: int = f(1, "validate every this many epochs", ge=1)
    resume_training_checkpoint_path: str = f("", "resume from this checkpoint; '' = latest found")
    pretrained_model: str = f(
        "", "load these weights (the tensors that fit) before training; also hf://ORG/NAME[@REV]"
    )
    pretrained_backbone: str = f(
        "",
        "backbone weights: a local file (timm, official Swin/ConvNeXt ImageNet .pth, DiNAT) or "
        "a timm hub name hf-hub:ORG/NAME[@REVISION]; "
        "'' = none",
    )
    precision: Literal["32", "16-mixed", "bf16-mixed"] = f(
        "32", "numeric precision; on CPU 32 or bf16-mixed (16-mixed runs as 32)"
    )
    cudnn_deterministic: bool = f(False, "GPU: deterministic cuDNN kernels (slower)")
    cudnn_benchmark: bool = f(False, "GPU: let cuDNN time kernels and pick the fastest")
    clip_grad_norm: float = f(0.01, "full-model gradient-norm clip; 0 = off", ge=0.0)
    seed: int = f(1234, "random seed", ge=0)
    log_every_n_steps: int = f(10, "logging interval in steps", ge=1)
    freeze_backbone: bool = f(False, "keep the backbone weights fixed")
    monitor: Literal["miou", "pq", "ap", "loss"] = f(
        "miou",
        "metric that picks model_best.ckpt: miou/pq/ap of validation (higher is better) or the "
        "epoch's mean training loss (lower is better)",
    )
    early_stop_patience: int = f(
        0, "stop after this many validations without a better monitored value; 0 = never", ge=0
    )
    optim: OptimConfig = sub(OptimConfig, "optimizer and schedule")


@dataclass
class TileConfig:
    mode: Literal["off", "on", "auto"] = f(
        "off",
        "on: segment in overlapping windows at the image's own scale (docs/tiling.md); auto: "
        "when the plain resize would shrink an image more than 2x; off: resize every image",
    )
    size: int = f(0, "window side in pixels; 0 = dataset.augmentation.eval_min_size", ge=0)
    overlap: int = f(0, "pixels neighbouring windows share at least; 0 = half of size", ge=0)
    batch_size: int = f(4, "windows per forward", ge=1)
    join: bool = f(
        True,
        "join the pieces of objects no window sees whole across seams (instance, panoptic); "
        "false leaves each window's piece on its own (objects seen whole are not affected)",
    )


@dataclass
class EvaluateConfig:
    checkpoint: str = f(
        "", "checkpoint to evaluate (file, transformers folder or hf://ORG/NAME[@REV])"
    )
    tasks: list[Task] = f(list(TASKS), "tasks to evaluate")
    split: Literal["val", "test"] = f("val", "dataset split")
    batch_size: int = f(1, "images per batch", ge=1)
    onnx_file: str = f("", "evaluate this exported ONNX file instead of a checkpoint")
    trt_engine: str = f("", "evaluate this TensorRT engine instead of a checkpoint")
    iou_per_class: bool = f(True, "write per-class tables and the bar chart")
    num_gpus: int = f(1, "GPU processes per node (NCCL); the images are split between them", ge=1)
    gpu_ids: list[int] = f([0], "GPU indices to use (as train.gpu_ids)")
    num_nodes: int = f(1, "nodes; reads WORLD_SIZE, NODE_RANK, MASTER_ADDR/PORT as train", ge=1)
    num_processes_cpu: int = f(1, "CPU processes (gloo); the images are split between them", ge=1)
    accelerator: Literal["auto", "cpu", "gpu"] = f("auto", "device type")
    precision: Precision = f("fp32", PRECISION_HELP)
    tile: TileConfig = sub(TileConfig, "tiled inference of images larger than the model's input")


@dataclass
class InferenceConfig:
    checkpoint: str = f("", "checkpoint to run (file, transformers folder or hf://ORG/NAME[@REV])")
    images: str = f("", "a folder, a glob, a text file listing images, or one image")
    tasks: list[Task] = f(["panoptic"], "tasks to run")
    resize: list[int] = f(
        [],
        "[height, width]: images are first resized to this, aspect not kept (TAO OneFormer's "
        "inference.image_size), then to eval_min_size; [] keeps the aspect",
    )
    semantic_ids: Literal["category", "contiguous"] = f("category", "ids in semantic PNGs")
    overlay: bool = f(True, "write overlay pictures")
    overwrite: bool = f(False, "redo images whose outputs exist")
    batch_size: int = f(1, "images per batch", ge=1)
    onnx_file: str = f("", "run this exported ONNX file instead of a checkpoint")
    trt_engine: str = f("", "run this TensorRT engine instead of a checkpoint")
    compile: bool = f(
        False,
        "torch.compile the pixel decoder (checkpoints): ~20% faster on CPU once compiled; "
        "compiling takes minutes per input size",
    )
    num_gpus: int = f(1, "GPU processes per node (NCCL); the images are split between them", ge=1)
    gpu_ids: list[int] = f([0], "GPU indices to use (as train.gpu_ids)")
    num_nodes: int = f(1, "nodes; reads WORLD_SIZE, NODE_RANK, MASTER_ADDR/PORT as train", ge=1)
    num_processes_cpu: int = f(1, "CPU processes (gloo); the images are split between them", ge=1)
    accelerator: Literal["auto", "cpu", "gpu"] = f("auto", "device type")
    precision: Precision = f("fp32", PRECISION_HELP)
    tile: TileConfig = sub(TileConfig, "tiled inference of images larger than the model's input")


@dataclass
class ExportConfig:
    checkpoint: str = f(
        "", "checkpoint to export (file, transformers folder or hf://ORG/NAME[@REV])"
    )
    onnx_file: str = f(
        "",
        "output ONNX file; '' = results_dir/export/model.onnx (all: one file per task, "
        "NAME_semantic.onnx ...)",
    )
    task: Literal["semantic", "instance", "panoptic", "all"] = f(
        "semantic", "task baked into the graph; all = one file per task"
    )
    input_height: int = f(640, "input height (a multiple of model.size_divisibility)", ge=32)
    input_width: int = f(640, "input width (a multiple of model.size_divisibility)", ge=32)
    batch_size: int = f(-1, "batch size; -1 = dynamic", ge=-1)
    dynamic_size: bool = f(
        False, "height and width free at run time (multiples of the size divisibility)"
    )
    opset_version: int = f(17, "ONNX opset", ge=16)
    on_cpu: bool = f(False, "export on the CPU even when a GPU is present")
    semantic_probs: bool = f(False, "semantic: also output the per-class scores [B, K, H, W]")
    check_image: str = f("", "image to compare ONNX Runtime with PyTorch on; '' = first val image")
    overwrite: bool = f(True, "replace an existing file")
    triton_repository: str = f(
        "", "also write a Triton model repository here (DIR/NAME/config.pbtxt, 1/model.onnx)"
    )


@dataclass
class TensorRTConfig:
    data_type: Literal["fp32", "fp16", "int8"] = f("fp16", "engine precision")
    workspace_size: int = f(4096, "builder workspace in MiB", ge=1)
    min_batch_size: int = f(1, "smallest batch of the optimisation profile", ge=1)
    opt_batch_size: int = f(1, "batch the engine is tuned for", ge=1)
    max_batch_size: int = f(1, "largest batch of the optimisation profile", ge=1)
    calibration_cache: str = f("", "int8: calibration cache file (read if present, else written)")
    calibration_images: int = f(
        32, "int8: images of quant_calibration_dataset to calibrate on", ge=1
    )


@dataclass
class GenTrtEngineConfig:
    onnx_file: str = f("", "ONNX model to build from")
    trt_engine: str = f("", "engine file to write; '' = results_dir/gen_trt_engine/model.engine")
    tensorrt: TensorRTConfig = sub(TensorRTConfig, "TensorRT builder settings")


@dataclass
class QuantizeConfig:
    onnx_file: str = f("", "float ONNX model (from oneseg export) to quantize")
    output_file: str = f("", "quantized ONNX; '' = results_dir/quantize/model_int8.onnx")
    num_calib_images: int = f(32, "calibration images of quant_calibration_dataset", ge=1)
    calibration_method: Literal["minmax", "entropy", "percentile"] = f(
        "minmax", "how activation ranges are chosen from the calibration images"
    )
    keep_float: list[str] = f(
        ["postprocess", "softmax", "grid_sample", "attention_matmul"],
        "node groups kept in float: postprocess (after the mask logits), softmax, grid_sample "
        "(deformable sampling), attention_matmul (products of two computed tensors), or ONNX "
        "node names",
    )
    op_types: list[str] = f(
        ["Conv", "MatMul", "Gemm"],
        "ONNX op types quantized in a region of mode op_types; [] = every op ONNX Runtime can "
        "quantize (keep_float apart)",
    )
    regions: dict[str, str] = f(
        {"backbone": "all", "decoder": "float"},
        "mode of each network region (backbone, pixel_decoder, decoder): float (kept float), "
        "op_types (only quantize.op_types) or all (every op type, so integer tensors pass from "
        "op to op); a region not named is op_types",
    )
    search: bool = f(
        False,
        "choose regions by measuring: each region alone in each mode (latency alternated with "
        "the float file, metric on dataset.val), then the fastest combination within "
        "max_metric_drop; recorded in the file's description and the report",
    )
    max_metric_drop: float = f(
        1.0, "search: points of PQ / mIoU / AP the INT8 file may lose on dataset.val", ge=0.0
    )
    per_channel: bool = f(True, "per-output-channel weight scales")
    report: bool = f(True, "measure size, latency and FP32 vs INT8 metrics on dataset.val")
    report_images: int = f(0, "val images for the accuracy report and the search; 0 = all", ge=0)
    latency_runs: int = f(
        20, "timed runs per file (alternated, medians) of report and search", ge=1
    )
    threads: int = f(0, "ONNX Runtime intra-op threads of the timings; 0 = its choice", ge=0)
    overwrite: bool = f(True, "replace an existing file")


# ----------------------------------------------------------------------------- serve
@dataclass
class ServeConfig:
    model: str = f("", "checkpoint, exported ONNX file (FP32 or INT8) or TensorRT engine to serve")
    host: str = f("127.0.0.1", "address to bind; beyond loopback an API key is required")
    port: int = f(8000, "TCP port; 0 = any free port (printed at start)", ge=0, le=65535)
    max_batch: int = f(4, "requests that may share one forward", ge=1)
    max_wait_ms: float = f(10.0, "how long the first request of a batch waits for others", ge=0.0)
    max_queue: int = f(64, "requests waiting at most; more are answered 503", ge=1)
    timeout_s: float = f(60.0, "a request not answered in this time is answered 504", gt=0.0)
    max_request_mb: float = f(32.0, "largest request body in MiB (413 above)", gt=0.0)
    min_image_side: int = f(8, "images with a shorter side are refused (422)", ge=1)
    api_key: str = f(
        "", "required in the X-API-Key header when set; '' = the ONESEG_API_KEY variable, if any"
    )
    tasks: list[Task] = f(["panoptic", "instance", "semantic"], "tasks to offer")
    precision: Precision = f("fp32", PRECISION_HELP)


# ----------------------------------------------------------------------------- automl
@dataclass
class AutoMLConfig:
    algorithm: Literal["bayesian", "hyperband", "random"] = f(
        "bayesian",
        "bayesian: TPE sampler; hyperband: TPE + Hyperband pruning between validations; "
        "random: random sampler",
    )
    metric: Literal["pq", "miou", "ap", "loss"] = f(
        "pq", "what a trial is judged by: a validation metric, or the epoch's mean training loss"
    )
    direction: Literal["auto", "maximize", "minimize"] = f(
        "auto", "auto: maximize pq / miou / ap, minimize loss"
    )
    max_trials: int = f(20, "trials of the study, over every process that runs it", ge=1)
    timeout: int = f(0, "seconds after which this process starts no new trial; 0 = none", ge=0)
    parameters: list[str] = f(
        [], "dotted spec keys to search; [] = the popular set (lr, weight decay, ...)"
    )
    disabled_parameters: list[str] = f([], "dotted keys left out of the search")
    ranges: dict[str, list[bool | int | float | str]] = f(
        {}, "KEY: [low, high] for a number, or a list of choices; default: from the schema"
    )
    storage: str = f(
        "", "SQLAlchemy URL of the study database; '' = SQLite in results_dir/automl/study.db"
    )
    study_name: str = f("oneseg", "name of the study in the storage")
    seed: int = f(-1, "sampler seed; -1 = a fresh one (leave it so when several processes run)")
    reduction_factor: int = f(3, "hyperband: keep the best 1/this of the trials at each rung", ge=2)


# ----------------------------------------------------------------------------- push
@dataclass
class PushConfig:
    checkpoint: str = f("", "model to publish (any checkpoint oneseg reads); '' = model.pretrained")
    repo_id: str = f("", "Hugging Face Hub repository ORG/NAME (created if missing)")
    private: bool = f(False, "create the repository private")
    dry_run: bool = f(False, "only write the folder (results_dir/push/hub); upload nothing")
    revision: str = f("main", "branch to commit to")
    commit_message: str = f("", "commit message; '' = 'oneseg push: ARCH BACKBONE'")
    metrics_file: str = f(
        "", "metrics.json of `oneseg evaluate` for the model card; '' = results_dir/evaluate/"
    )
    onnx_files: list[str] = f([], "exported ONNX files to publish too, each with its .json sidecar")


@dataclass
class ExperimentConfig:
    results_dir: str = f("results", "every action writes into results_dir/ACTION/")
    cpu_threads: int = f(
        0,
        "intra-op CPU threads of train, evaluate and inference; 0 = the cores this process may "
        "use (affinity) minus its data-loader workers, or OMP_NUM_THREADS when set",
        ge=0,
    )
    model: ModelConfig = sub(ModelConfig, "the network")
    dataset: DatasetConfig = sub(DatasetConfig, "data and augmentation")
    train: TrainConfig = sub(TrainConfig, "training")
    evaluate: EvaluateConfig = sub(EvaluateConfig, "evaluation")
    inference: InferenceConfig = sub(InferenceConfig, "inference")
    export: ExportConfig = sub(ExportConfig, "ONNX export")
    gen_trt_engine: GenTrtEngineConfig = sub(GenTrtEngineConfig, "TensorRT engine build")
    quantize: QuantizeConfig = sub(QuantizeConfig, "INT8 quantization")
    automl: AutoMLConfig = sub(AutoMLConfig, "hyper-parameter search over this spec")
    push: PushConfig = sub(PushConfig, "publish a model on the Hugging Face Hub")
    serve: ServeConfig = sub(ServeConfig, "HTTP API and web page (oneseg serve)")


# settings of the model section that shape the network, from their field metadata
ARCHITECTURE_KEYS = tuple(
    fl.name for fl in fields(ModelConfig) if fl.metadata.get("architecture", False)
)
