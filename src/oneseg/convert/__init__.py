"""Weights from other implementations, converted exactly into oneseg's model.

    hf          a local transformers `OneFormerForUniversalSegmentation` folder
    hf_key_map  where each of our tensors comes from in a transformers checkpoint
    detectron2  original (SHI-Labs, detectron2) and NVIDIA TAO OneFormer / Mask2Former files
    safe_load   reading a `.pth` without running pickled code
    backbone_weights  ImageNet backbone files (official Swin / ConvNeXt, DiNAT) for
                `train.pretrained_backbone`

`oneseg.checkpoint.read_checkpoint` reads every source through these; `oneseg convert` writes
any of them as a oneseg checkpoint.
"""
