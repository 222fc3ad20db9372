"""Tile-like training data (``training.synthesis``) and the block split, on tiny synthetic arrays."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from patchdet.training.checkpoint import load_checkpoint
from patchdet.training.config import AugmentConfig, TileAugmentConfig, TrainConfig
from patchdet.training.data import ImageSet, block_split, file_index_key, load_block_split
from patchdet.training.synthesis import (
    TileSynthesis,
    car_part,
    cut_car_center,
    feather_mask,
    paste,
    photometric,
    synthesize_tiles,
)
from patchdet.training.train import train


def _image_set(n_cars: int = 6, n_backgrounds: int = 6, n_extra: int = 3, side: int = 16) -> ImageSet:
    cars = np.full((n_cars, 3, side, side), 200, dtype=np.uint8)
    backgrounds = np.full((n_backgrounds, 3, side, side), 40, dtype=np.uint8)
    extra = np.full((n_extra, 3, side, side), 120, dtype=np.uint8)
    images = torch.from_numpy(np.concatenate([cars, backgrounds, extra]))
    labels = torch.tensor([0] * n_cars + [1] * n_backgrounds + [2] * n_extra)
    return ImageSet(images, labels, ("car", "background", "extra:bird"), [], {})


@pytest.mark.parametrize(
    ("label", "center_xy", "side", "covered_box"),
    [
        ("inside", (8, 8), 8, (4, 4, 12, 12)),
        ("cut by the left border", (0, 8), 8, (0, 4, 4, 12)),
        ("larger than the canvas", (8, 8), 32, (0, 0, 16, 16)),
        ("entirely outside", (40, 40), 8, None),
    ],
)
def test_paste_places_the_patch_and_clips_at_borders(label, center_xy, side, covered_box):
    canvas = np.zeros((16, 16, 3), dtype=np.uint8)
    patch = np.full((10, 10, 3), 255, dtype=np.uint8)
    out = paste(canvas, patch, center_xy, side)
    assert canvas.max() == 0, "the canvas must not be modified"
    touched = out[..., 0] > 0
    if covered_box is None:
        assert not touched.any(), label
        return
    x0, y0, x1, y1 = covered_box
    expected = np.zeros((16, 16), dtype=bool)
    expected[y0:y1, x0:x1] = True
    assert not (touched & ~expected).any(), label  # nothing outside the pasted square
    assert out[(y0 + y1) // 2, (x0 + x1) // 2, 0] > 200, label  # its middle is the patch


def test_feather_mask_is_one_inside_and_low_at_the_border():
    mask = feather_mask(20)
    assert mask.shape == (20, 20) and mask[10, 10] == 1.0
    assert mask[0, 10] < 0.3 and mask[10, 0] < 0.3 and (mask == mask.T).all()


@pytest.mark.parametrize("border", [0, 1, 2, 3])
@pytest.mark.parametrize("visible", [0.1, 0.35])
def test_cut_car_center_leaves_the_requested_sliver_inside(border, visible):
    tile, car = 64, 60
    cx, cy = cut_car_center(tile, car, visible, border, 0.5)
    x0, x1 = max(cx - car / 2, 0), min(cx + car / 2, tile)
    y0, y1 = max(cy - car / 2, 0), min(cy + car / 2, tile)
    inside_across = (x1 - x0) if border in (0, 1) else (y1 - y0)
    assert inside_across == pytest.approx(visible * car)


def test_photometric_keeps_shape_and_dtype_and_is_seeded():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    tiles = TileAugmentConfig(blur=1.0, low_resolution=1.0, jpeg=1.0)
    a = photometric(image, np.random.default_rng(5), tiles)
    b = photometric(image, np.random.default_rng(5), tiles)
    assert a.shape == image.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)


def test_tile_synthesis_keeps_labels_and_is_seeded():
    dataset = TileSynthesis(_image_set(), AugmentConfig(kind="tiles"), background_labels=(1,))
    torch.manual_seed(3)
    first = [dataset[i] for i in range(len(dataset))]
    torch.manual_seed(3)
    second = [dataset[i] for i in range(len(dataset))]
    for (image_a, label_a), (image_b, label_b), expected in zip(first, second, dataset.labels, strict=True):
        assert image_a.shape == (3, 16, 16) and image_a.dtype == torch.uint8
        assert label_a == label_b == expected
        assert torch.equal(image_a, image_b)


def test_positive_tiles_hold_the_car_and_negatives_only_a_sliver():
    # No photometric noise or flips: bright pixels are car, dark ones background.
    quiet = TileAugmentConfig(brightness=0, contrast=0, blur=0, low_resolution=0, jpeg=0, plain_fraction=0,
                              two_cars=0, cut_car_fraction=1.0)
    dataset = TileSynthesis(_image_set(side=32), AugmentConfig(kind="tiles", hflip=False, tiles=quiet), (1,))
    rng = np.random.default_rng(0)
    for _ in range(20):
        car_share = (dataset.sample(0, rng)[..., 0] > 120).mean()
        assert car_share > 0.15  # scale >= 0.5 and the centre within 0.25 of the middle
        sliver_share = (dataset.sample(6, rng)[..., 0] > 120).mean()
        assert sliver_share < 0.4  # at most 35 % of a car's side inside the tile
    small = TileAugmentConfig(brightness=0, contrast=0, blur=0, low_resolution=0, jpeg=0, cut_car_fraction=0,
                              small_car_fraction=1.0)
    dataset = TileSynthesis(_image_set(side=32), AugmentConfig(kind="tiles", hflip=False, tiles=small), (1,))
    for _ in range(20):
        assert 0 < (dataset.sample(6, rng)[..., 0] > 120).mean() < 3 * 0.33**2  # one to three small cars
    extra = dataset.sample(12, rng)
    assert np.all(extra == 120)  # extra negatives are used as they are


def test_car_part_negatives_are_an_enlarged_window_of_a_car():
    car = np.zeros((32, 32, 3), np.uint8)
    car[:, :16] = 255  # left half white: a window of at most half the side is one colour or a split of both
    rng = np.random.default_rng(0)
    shares = []
    for _ in range(30):
        part = car_part(car, rng, (0.3, 0.5))
        assert part.shape == car.shape
        shares.append((part[..., 0] > 127).mean())
    assert min(shares) < 0.05 and max(shares) > 0.95  # enlarged: some parts hold no edge at all
    parts = TileAugmentConfig(brightness=0, contrast=0, blur=0, low_resolution=0, jpeg=0, cut_car_fraction=0,
                              car_part_fraction=1.0)
    dataset = TileSynthesis(_image_set(side=32), AugmentConfig(kind="tiles", hflip=False, tiles=parts), (1,))
    negative = dataset.sample(6, rng)
    assert np.all(negative == 200) and dataset.labels[6] == 1  # a background sample that is all car, labelled not-car


def test_synthesize_tiles_is_fixed_by_the_seed():
    image_set = _image_set()
    a = synthesize_tiles(image_set, AugmentConfig(kind="tiles"), (1,), seed=1)
    b = synthesize_tiles(image_set, AugmentConfig(kind="tiles"), (1,), seed=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, image_set.labels)


def test_tile_synthesis_needs_cars_and_backgrounds():
    with pytest.raises(ValueError, match="background classes"):
        TileSynthesis(_image_set(), AugmentConfig(kind="tiles"), background_labels=(7,))


def test_file_index_key_is_natural_order():
    names = ["image10.png", "image9.png", "1.png", "image100.png"]
    assert sorted(names, key=lambda n: file_index_key(Path(n))) == ["1.png", "image9.png", "image10.png",
                                                                    "image100.png"]


def _write_frames(folder: Path, count: int, start_value: int = 0, duplicate_of: dict[int, int] | None = None) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        value = (start_value + (duplicate_of or {}).get(i, i)) * 3 % 256
        cv2.imwrite(str(folder / f"image{i}.png"), np.full((8, 8, 3), value, dtype=np.uint8))


def test_block_split_holds_out_the_last_block_of_each_folder_and_drops_duplicates(tmp_path):
    _write_frames(tmp_path / "car" / "GTI_Far", 20)
    _write_frames(tmp_path / "car" / "KITTI", 10, start_value=30, duplicate_of={9: 0})  # frame 9 == frame 0
    _write_frames(tmp_path / "road" / "GTI", 10, start_value=60)
    from patchdet.runtime.imagefolder import scan_image_folder

    index = scan_image_folder(tmp_path, ["car", "road"])
    train_idx, val_idx, dropped = block_split(index.paths, index.labels, 0.2)
    held_out = sorted(f"{index.paths[i].parent.name}/{index.paths[i].name}" for i in val_idx)
    assert held_out == ["GTI/image8.png", "GTI/image9.png", "GTI_Far/image16.png", "GTI_Far/image17.png",
                        "GTI_Far/image18.png", "GTI_Far/image19.png",
                        "KITTI/image8.png", "KITTI/image9.png"]
    assert dropped == 1  # KITTI frame 0 equals the held-out frame 9: it leaves training
    names = {f"{index.paths[i].parent.name}/{index.paths[i].name}" for i in train_idx}
    assert "KITTI/image0.png" not in names and "GTI_Far/image10.png" in names
    assert not set(train_idx) & set(val_idx)

    train_set, val_set = load_block_split(str(tmp_path), ["car", "road"], 16, 0.2)
    assert len(train_set) == len(train_idx) and len(val_set) == len(val_idx) == 8
    assert train_set.images.shape[1:] == (3, 16, 16)


def test_tiles_augment_needs_a_binary_run_or_an_object_and_background():
    with pytest.raises(ValueError, match="binary run"):
        TrainConfig(data="d", augment=AugmentConfig(kind="tiles"))
    with pytest.raises(ValueError, match="binary run"):
        TrainConfig(data="d", classes=("background", "car"), augment=AugmentConfig(kind="tiles"))
    TrainConfig(data="d", classes=("car", "background"), loss="pod", augment=AugmentConfig(kind="tiles"))
    with pytest.raises(ValueError, match="small_car_fraction"):
        TileAugmentConfig(cut_car_fraction=0.6, small_car_fraction=0.6)
    with pytest.raises(ValueError, match="car_part_fraction"):
        TileAugmentConfig(cut_car_fraction=0.5, small_car_fraction=0.3, car_part_fraction=0.3)
    with pytest.raises(ValueError, match="car_part_scale"):
        TileAugmentConfig(car_part_scale=(0.3, 1.5))
    with pytest.raises(ValueError, match="augment kind"):
        AugmentConfig(kind="mosaic")


def test_train_with_tiles_blocks_and_extra_negatives(tmp_path, tiny_folder):
    _write_frames(tmp_path / "vehicles" / "vehicles" / "GTI", 24)
    _write_frames(tmp_path / "vehicles" / "non-vehicles" / "Extras", 24, start_value=40)
    cfg = TrainConfig(data=str(tmp_path / "vehicles"), positive="vehicles", negatives=("non-vehicles",),
                      split="blocks", val_fraction=0.25, extra_negatives=str(tiny_folder),
                      extra_negative_classes=("bird", "deer"), augment=AugmentConfig(kind="tiles"),
                      data_terms="research use only", input_size=32, epochs=1, batch_size=16, out=str(tmp_path / "run"), tensorboard=False)
    result = train(cfg)
    record = result.history[-1]["val"]
    assert set(record["at_origin"]) == {"vehicles", "non-vehicles", "extra:bird", "extra:deer"}
    summary = load_checkpoint(result.best_checkpoint)["training"]
    assert summary["terms"] == "research use only" and summary["split"] == "blocks"
    assert summary["augment"] == "tiles" and summary["extra_negatives"]["classes"] == ["bird", "deer"]


def test_extra_positives_join_the_positive_class_in_both_splits(tmp_path, tiny_folder):
    from patchdet.training.run_data import data_summary, load_run_data

    _write_frames(tmp_path / "vehicles" / "vehicles" / "GTI", 24)
    _write_frames(tmp_path / "vehicles" / "non-vehicles" / "Extras", 24, start_value=40)
    base = dict(data=str(tmp_path / "vehicles"), positive="vehicles", negatives=("non-vehicles",), split="blocks",
                val_fraction=0.25, input_size=32, out=str(tmp_path / "run"), tensorboard=False)
    plain_train, plain_val = load_run_data(TrainConfig(**base), ["vehicles", "non-vehicles"])
    cfg = TrainConfig(**base, extra_positives=str(tiny_folder), extra_positive_classes=("bird",))
    train_set, val_set = load_run_data(cfg, ["vehicles", "non-vehicles"])
    n_bird = len(list((tiny_folder / "bird").iterdir()))
    assert train_set.class_names == plain_train.class_names == ("vehicles", "non-vehicles")
    added = (train_set.counts()["vehicles"] - plain_train.counts()["vehicles"]
             + val_set.counts()["vehicles"] - plain_val.counts()["vehicles"])
    assert added == n_bird and val_set.counts()["vehicles"] > plain_val.counts()["vehicles"]
    assert train_set.counts()["non-vehicles"] == plain_train.counts()["non-vehicles"]
    assert data_summary(train_set, val_set, cfg)["extra_positives"] == {"source": str(tiny_folder), "classes": ["bird"]}


def test_extra_positives_need_classes_and_a_binary_run():
    with pytest.raises(ValueError, match="extra_positive_classes"):
        TrainConfig(data="x", positive="car", negatives=("bg",), extra_positives="y")
    with pytest.raises(ValueError, match="binary run"):
        TrainConfig(data="x", classes=("a", "b"), extra_positives="y", extra_positive_classes=("a",))


def test_pod_car_and_background_trains_on_synthesized_tiles(tmp_path):
    from patchdet.training.run_data import load_run_data, training_dataset

    _write_frames(tmp_path / "data" / "car" / "GTI", 24)
    _write_frames(tmp_path / "data" / "background" / "Extras", 24, start_value=40)
    cfg = TrainConfig(data=str(tmp_path / "data"), classes=("car", "background"), loss="pod", split="blocks",
                      val_fraction=0.25, augment=AugmentConfig(kind="tiles"), input_size=32, epochs=1,
                      batch_size=16, out=str(tmp_path / "run"), tensorboard=False)
    train_set, _ = load_run_data(cfg, list(cfg.classes))
    dataset = training_dataset(cfg, train_set)
    assert list(dataset.backgrounds) == list(np.flatnonzero(train_set.labels.numpy() == 1))
    result = train(cfg)
    assert load_checkpoint(result.best_checkpoint)["background_class"] == "background"
