"""Training data for a demo model that segments windows of large images: 2 x 2 mosaics of demo
scenes (256 x 256), to be cropped to 128 x 128 at their own scale in training, so that the model
sees what a window of a mosaic shows (parts of several scenes, objects cut by the border).

    python benchmarks/tile_train_data.py OUT [--count 240]
    oneseg train -e OUT/spec.yaml        # the demo's model and schedule on these crops

Scenes come from `oneseg.data.synth.render_image` with seed 0, as `oneseg demo` draws them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from oneseg.data.synth import categories, render_image, write_synthetic_dataset
from oneseg.demo import IMAGE_SIZE, demo_spec
from oneseg.io import id_to_rgb
from oneseg.spec import dump_spec, spec_from_dict


def write_mosaics(root: Path, count: int) -> dict:
    images_dir, panoptic_dir = root / "images", root / "panoptic"
    images_dir.mkdir(parents=True, exist_ok=True)
    panoptic_dir.mkdir(parents=True, exist_ok=True)
    size = 2 * IMAGE_SIZE
    images, annotations = [], []
    for index in range(count):
        image = np.zeros((size, size, 3), np.uint8)
        ids = np.zeros((size, size), np.int64)
        infos = []
        for quarter in range(4):
            rng = np.random.default_rng([0, 0, 4 * index + quarter])
            scene, segment_map, segments = render_image(rng, IMAGE_SIZE, IMAGE_SIZE)
            y, x = IMAGE_SIZE * (quarter // 2), IMAGE_SIZE * (quarter % 2)
            image[y : y + IMAGE_SIZE, x : x + IMAGE_SIZE] = scene
            for seg in segments:
                new = len(infos) + 1
                ids[y : y + IMAGE_SIZE, x : x + IMAGE_SIZE][segment_map == seg["id"]] = new
                infos.append(
                    {"id": new, "category_id": seg["category_id"], "iscrowd": seg["iscrowd"]}
                )
        for info in infos:
            mask = ids == info["id"]
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            info["area"] = int(mask.sum())
            info["bbox"] = [
                int(cols[0]),
                int(rows[0]),
                int(cols[-1] - cols[0] + 1),
                int(rows[-1] - rows[0] + 1),
            ]
        name = f"{index + 1:06d}"
        Image.fromarray(image).save(images_dir / f"{name}.jpg", quality=92)
        Image.fromarray(id_to_rgb(ids)).save(panoptic_dir / f"{name}.png")
        images.append({"id": index + 1, "file_name": f"{name}.jpg", "height": size, "width": size})
        annotations.append(
            {"image_id": index + 1, "file_name": f"{name}.png", "segments_info": infos}
        )
    panoptic_json = root / "panoptic.json"
    panoptic_json.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories()})
    )
    return {"images": images_dir, "panoptic": panoptic_dir, "panoptic_json": panoptic_json}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("--count", type=int, default=240)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    root = Path(args.out)
    data = write_synthetic_dataset(root / "scenes", 1, 32, (IMAGE_SIZE, IMAGE_SIZE))
    data["train"] = write_mosaics(root / "mosaics", args.count)
    values = demo_spec(root, data, args.epochs, args.count)
    aug = values["dataset"]["augmentation"]
    aug["train_min_size"], aug["train_max_size"] = [2 * IMAGE_SIZE], 4 * IMAGE_SIZE
    (root / "spec.yaml").write_text(dump_spec(spec_from_dict(values)))
    print(f"spec: {root / 'spec.yaml'}")


if __name__ == "__main__":
    main()
