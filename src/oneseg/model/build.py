"""The one place where the model config becomes constructor calls."""

from __future__ import annotations

from oneseg.config import ModelConfig
from oneseg.constants import TASKS
from oneseg.model.backbone import build_backbone
from oneseg.model.layers import MLP
from oneseg.model.oneformer import OneFormer
from oneseg.model.packed import use_packed_linears
from oneseg.model.pixel_decoder import PixelDecoder
from oneseg.model.text_encoder import TextQueries
from oneseg.model.transformer_decoder import (
    LearnedQueries,
    TaskConditionedQueries,
    TransformerDecoder,
)
from oneseg.tokenizer import task_text, tokenize


def model_tasks(cfg: ModelConfig) -> tuple[str, ...]:
    """The tasks a model of this config segments, in `TASKS` order.

    OneFormer: all three, chosen by the task token. Mask2Former: the task of `cfg.mode`; a
    panoptic model also gives semantic and instance results from the same outputs, as the
    original Mask2Former reports all three from one panoptic model."""
    if cfg.arch == "oneformer" or cfg.mode == "panoptic":
        return TASKS
    return (cfg.mode,)


def supported_tasks(cfg: ModelConfig, requested: list[str]) -> tuple[list[str], list[str]]:
    """(the requested tasks the model does, the others); the model's own task(s) when it does
    none of those requested."""
    own = model_tasks(cfg)
    kept = [t for t in dict.fromkeys(requested) if t in own]
    dropped = [t for t in dict.fromkeys(requested) if t not in own]
    return (kept or list(own)), dropped


def build_model(cfg: ModelConfig, num_classes: int | None = None) -> OneFormer:
    """A randomly initialised OneFormer (or Mask2Former) for `num_classes` classes.

    num_classes overrides cfg.num_classes when given."""
    classes = num_classes if num_classes is not None else cfg.num_classes
    if classes < 1:
        raise ValueError(
            "model.num_classes is 0 and no class count was given (set model.num_classes or "
            "dataset.label_map)"
        )
    oneformer = cfg.arch == "oneformer"
    backbone = build_backbone(
        cfg.backbone,
        drop_path_rate=cfg.drop_path_rate,
        embed_dim=cfg.backbone_embed_dim,
        depths=cfg.backbone_depths or None,
        num_heads=cfg.backbone_num_heads or None,
        window_size=cfg.backbone_window_size,
        dilations=cfg.backbone_dilations or None,
        frozen_bn=cfg.backbone_frozen_bn,
    )
    pixel_decoder = _pixel_decoder(cfg.pixel_decoder, backbone)
    decoder = _transformer_decoder(cfg, classes)
    task_mlp = text_queries = task_token_ids = None
    if oneformer:
        task_mlp = MLP(cfg.task_seq_len, cfg.hidden_dim, cfg.hidden_dim, 2)
        prompts = [task_text(task, cfg.task_text) for task in TASKS]
        task_token_ids = tokenize(prompts, cfg.task_seq_len)  # [3, task_seq_len]
        text_queries = _text_queries(cfg)
    model = OneFormer(
        backbone=backbone,
        pixel_decoder=pixel_decoder,
        decoder=decoder,
        task_mlp=task_mlp,
        text_queries=text_queries,
        num_classes=classes,
        num_queries=cfg.num_queries,
        size_divisibility=cfg.size_divisibility,
        pixel_mean=cfg.pixel_mean,
        pixel_std=cfg.pixel_std,
        contrastive_temperature=cfg.loss.contrastive_temperature,
        task_text=cfg.task_text,
        task_token_ids=task_token_ids,
    )
    use_packed_linears(model)  # inference on the CPU reads prepacked weights (same parameters)
    return model


def _pixel_decoder(pd, backbone) -> PixelDecoder:
    return PixelDecoder(
        in_channels=backbone.channels,
        in_strides=backbone.strides,
        conv_dim=pd.conv_dim,
        mask_dim=pd.mask_dim,
        enc_layers=pd.enc_layers,
        enc_heads=pd.enc_heads,
        enc_points=pd.enc_points,
        enc_ffn_dim=pd.enc_ffn_dim,
        dropout=pd.dropout,
        norm_groups=pd.norm_groups,
    )


def _transformer_decoder(cfg: ModelConfig, num_classes: int) -> TransformerDecoder:
    """The masked-attention decoder with OneFormer's task-conditioned queries, or Mask2Former's
    learned ones."""
    if cfg.arch == "oneformer":
        query_init = TaskConditionedQueries(
            hidden_dim=cfg.hidden_dim,
            mask_dim=cfg.pixel_decoder.mask_dim,
            nheads=cfg.nheads,
            dim_feedforward=cfg.dim_feedforward,
            num_layers=cfg.query_dec_layers,
            dropout=cfg.query_dropout,
            pre_norm=cfg.pre_norm,
        )
    else:
        query_init = LearnedQueries(cfg.num_queries, cfg.hidden_dim)
    return TransformerDecoder(
        in_channels=cfg.pixel_decoder.conv_dim,
        mask_dim=cfg.pixel_decoder.mask_dim,
        num_classes=num_classes,
        hidden_dim=cfg.hidden_dim,
        num_queries=cfg.num_queries,
        nheads=cfg.nheads,
        dim_feedforward=cfg.dim_feedforward,
        dec_layers=cfg.dec_layers,
        pre_norm=cfg.pre_norm,
        enforce_input_proj=cfg.enforce_input_proj,
        query_init=query_init,
        dropout=cfg.dropout,
    )


def _text_queries(cfg: ModelConfig) -> TextQueries:
    """OneFormer's training-only text branch."""
    te = cfg.text_encoder
    if te.n_ctx >= cfg.num_queries:
        raise ValueError(
            f"text_encoder.n_ctx ({te.n_ctx}) must be below num_queries ({cfg.num_queries})"
        )
    return TextQueries(
        context_length=te.context_length,
        width=te.width,
        layers=te.layers,
        vocab_size=te.vocab_size,
        proj_layers=te.proj_layers,
        n_ctx=te.n_ctx,
        dim=cfg.hidden_dim,
    )
