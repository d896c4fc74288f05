"""INT8 calibration for TensorRT: the calibration images at the engine's input size, with a
cache file read when present and written after calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from oneseg.data.image_io import read_image
from oneseg.export.inputs import resized_batch


def make_calibrator(trt, plan):
    """An `IInt8EntropyCalibrator2` over `plan.calibration_images` (or `plan.calibration_cache`)."""
    batch, _, height, width = plan.opt_shape

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.paths = list(plan.calibration_images)
            self.cache = Path(plan.calibration_cache) if plan.calibration_cache else None
            self.buffer = None

        def get_batch_size(self):
            return batch

        def get_batch(self, names):
            if not self.paths:
                return None
            chunk, self.paths = self.paths[:batch], self.paths[batch:]
            images = [resized_batch(read_image(p), height, width, 1)[0] for p in chunk]
            while len(images) < batch:
                images.append(images[-1])
            self.buffer = torch.from_numpy(np.stack([i.numpy() for i in images])).cuda()
            return [int(self.buffer.data_ptr())]

        def read_calibration_cache(self):
            if self.cache is not None and self.cache.is_file():
                return self.cache.read_bytes()
            return None

        def write_calibration_cache(self, cache):
            if self.cache is not None:
                self.cache.parent.mkdir(parents=True, exist_ok=True)
                self.cache.write_bytes(bytes(cache))

    return Calibrator()
