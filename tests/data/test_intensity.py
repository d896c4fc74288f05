"""Images of more than 8 bits: the intensity rule, the same in training, evaluation and
inference, recorded in the checkpoint, and `data check`'s warning on low-range images.

The fixture is what real fluorescence images of nuclei look like: a 16-bit file whose values
lie in 0-205 (0.3% of the 16-bit range)."""

import json

import numpy as np
import pytest
from PIL import Image

from oneseg.config import DatasetConfig, DataSource, IntensityConfig
from oneseg.data.image_io import dataset_window, read_image
from oneseg.data.intensity import Intensity, choose_intensity, to_uint8
from oneseg.data.report import WARNING


def _nuclei(seed=0, top=205, size=(32, 40)) -> np.ndarray:
    """uint16 [H, W]: dim background (0-20) and a few bright blobs up to `top`."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 21, size)
    ys, xs = np.mgrid[0 : size[0], 0 : size[1]]
    for cy, cx in ((8, 10), (20, 28), (24, 8)):
        values[(ys - cy) ** 2 + (xs - cx) ** 2 < 25] = top - rng.integers(0, 10)
    values[0, 0] = top
    return values.astype(np.uint16)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_low_range_16bit_image_is_not_crushed(tmp_path, suffix):
    values = _nuclei()
    path = tmp_path / f"n{suffix}"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    old = read_image(path, Intensity(mode="full_range"))  # the old 1/257 scaling
    assert old.max() <= 1  # black: what training used to see
    out = read_image(path)  # the default: per-image percentiles
    assert out.shape == (32, 40, 3) and out.dtype == np.uint8
    assert out.max() == 255 and out.min() == 0
    blob, background = out[8, 10, 0], out[2, 30, 0]
    assert blob > 200 and background < 40  # contrast kept


def test_each_mode_maps_its_window(tmp_path):
    values = np.array([[0, 50, 100, 205]], dtype=np.uint16)
    kind = "16bit"
    assert to_uint8(values, kind, Intensity(mode="minmax")).tolist() == [[0, 62, 124, 255]]
    assert to_uint8(values, kind, Intensity(mode="fixed", low=0, high=410)).tolist() == [
        [0, 31, 62, 128]
    ]
    assert to_uint8(values, kind, Intensity(mode="full_range")).tolist() == [[0, 0, 0, 1]]
    pct = to_uint8(values, kind, Intensity(mode="percentile", low=0, high=100))
    assert pct.tolist() == [[0, 62, 124, 255]]
    flat = np.full((2, 2), 30000, dtype=np.uint16)  # no window: the type's scale
    assert to_uint8(flat, kind, Intensity(mode="minmax")).tolist() == [[117, 117], [117, 117]]


def test_eight_bit_images_are_never_changed(tmp_path):
    gray = np.tile(np.arange(0, 40, 2, dtype=np.uint8), (3, 1))  # low range, but 8-bit
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png", Intensity(mode="minmax"))
    np.testing.assert_array_equal(out[..., 0], gray)


def test_per_dataset_window_is_one_fixed_rule(tmp_path):
    paths = []
    for k, top in enumerate((100, 205, 150)):
        paths.append(tmp_path / f"{k}.png")
        Image.fromarray(_nuclei(k, top)).save(paths[-1])
    rule = dataset_window(paths, Intensity(mode="minmax", per="dataset"))
    assert rule.mode == "fixed" and rule.low == 0 and rule.high == 205
    # the dimmest image stays dimmer than the brightest: one window for all
    dim, bright = read_image(paths[0], rule), read_image(paths[1], rule)
    assert dim.max() < bright.max() == 255
    assert dataset_window(paths, Intensity()) == Intensity()  # per image: unchanged


def test_bad_rules_are_refused():
    with pytest.raises(ValueError, match="below high"):
        Intensity(mode="fixed", low=10, high=5)
    with pytest.raises(ValueError, match="0..100"):
        Intensity(mode="percentile", low=1, high=120)


def test_checkpoint_rule_is_used_unless_the_spec_sets_one():
    recorded = Intensity(mode="fixed", low=0, high=4095).to_dict()
    assert choose_intensity(IntensityConfig(), recorded) == Intensity(
        mode="fixed", low=0, high=4095
    )
    assert choose_intensity(IntensityConfig(), None) == Intensity()
    explicit = IntensityConfig(mode="minmax")
    assert choose_intensity(explicit, recorded).mode == "minmax"


def _semantic_16bit(tmp_path, n=2):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for k in range(n):
        values = _nuclei(k)
        Image.fromarray(values).save(images / f"n{k}.png")
        Image.fromarray((values > 100).astype(np.uint8)).save(labels / f"n{k}.png")
    label_map = tmp_path / "labels.json"
    label_map.write_text(
        json.dumps(
            [
                {"id": 0, "name": "background", "isthing": 0},
                {"id": 1, "name": "nucleus", "isthing": 1},
            ]
        )
    )
    source = DataSource(images=str(images), labels=str(labels))
    return DatasetConfig(type="semantic", train=[source], val=source, label_map=str(label_map))


def test_training_evaluation_and_inference_see_the_same_pixels(tmp_path, tiny_model_cfg):

    from oneseg.checkpoint import make_checkpoint, read_intensity, save_atomic
    from oneseg.data.build import build_dataset, load_label_map
    from oneseg.model.build import build_model
    from oneseg.predictor import Predictor, as_rgb_array

    cfg = _semantic_16bit(tmp_path)
    cfg.intensity = IntensityConfig(mode="minmax", per="dataset")
    label_map = load_label_map(cfg)
    train_set = build_dataset(cfg, "train", label_map, 4, 32, train=True)
    rule = dataset_window([r.image_path for r in train_set.records], train_set.intensity)
    assert rule.mode == "fixed"
    val_set = build_dataset(cfg, "val", label_map, 4, 32, train=False, intensity=rule)
    _, val_image, _ = val_set.load(0)

    model = build_model(tiny_model_cfg, num_classes=len(label_map))
    path = tmp_path / "m.pth"
    save_atomic(
        make_checkpoint(tiny_model_cfg, label_map, model.state_dict(), rule.to_dict()), path
    )
    assert Intensity.from_config(read_intensity(path)) == rule
    predictor = Predictor.from_checkpoint(path, device="cpu")
    assert predictor.intensity == rule
    seen = as_rgb_array(val_set.record(0).image_path, predictor.intensity)
    np.testing.assert_array_equal(seen, val_image)
    assert seen.max() == 255


def test_data_check_warns_on_low_range_images(tmp_path):
    from oneseg.data.check import check_dataset

    report = check_dataset(_semantic_16bit(tmp_path), splits=("train",))
    warnings = [p for p in report.problems if p.severity == WARNING]
    assert len(warnings) == 2 and not report.errors
    assert "16bit values 0-205 use 0.3% of the type's range" in warnings[0].message
    assert "dataset.intensity" in warnings[0].message
