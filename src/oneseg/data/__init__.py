"""Datasets, targets and augmentation.

Where things are:
    records        the common record, segment map and segments every reader yields
    image_io       decoding images (any mode, EXIF upright) and label PNGs
    coco_panoptic  reader of COCO panoptic (PNG + JSON)
    coco_instance  reader of COCO instance JSON (polygons, RLE, crowd)
    semantic       reader of image + label-PNG folders
    targets        task-conditioned masks, labels, ignore mask and text lists
    transforms     resize / crop / large-scale jitter / flip / colour jitter
    dataset        SegmentationDataset: records in, samples out
    collate        batching with padding and pixel masks
    build          dataset spec -> readers, transforms, datasets, loaders, label map
    check, report  `oneseg data check`
    synth          the synthetic shapes dataset (drawing in synth_draw)
"""
