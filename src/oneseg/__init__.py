"""oneseg: universal image segmentation with OneFormer and Mask2Former."""

__version__ = "0.1.0"
