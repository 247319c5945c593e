"""The image-classification task: reading an ImageFolder, skipping bad files, splitting, resizing once."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autotl.errors import DataError
from autotl_image import ImageClassification
from autotl_image._folder import load_image_folder, resize_all


def load(root: Path, seed: int = 0, val_fraction: float = 0.25):
    return load_image_folder(root, seed=seed, val_fraction=val_fraction)


def save_image(path: Path, mode: str, size=(20, 14), value: int = 128) -> Path:
    """An image of ``mode`` (L, LA, RGB, RGBA, P, ...) with a little texture."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    rgb[::2, :, 0] = 255 - value
    image = Image.fromarray(rgb, "RGB")
    if mode == "P":
        image = image.convert("P", palette=Image.ADAPTIVE, colors=8)
    elif mode == "P+transparency":
        image = image.convert("P", palette=Image.ADAPTIVE, colors=8)
        image.info["transparency"] = 0
    else:
        image = image.convert(mode)
    image.save(path)
    return path


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def two_class_folder(root: Path, per_class: int = 4) -> Path:
    for cls, value in (("cats", 40), ("dogs", 200)):
        for i in range(per_class):
            save_image(root / "train" / cls / f"{i}.png", "RGB", value=value + i)
    return root


# -- decoding --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "P+transparency", "I;16", "CMYK"])
def test_images_of_any_mode_load_as_three_channels(tmp_path, mode):
    root = two_class_folder(tmp_path / "data")
    suffix = ".jpg" if mode == "CMYK" else ".png"
    save_image(root / "train" / "cats" / f"odd{suffix}", mode)
    data = load(root)
    images = data.splits["train"][0] + data.splits["val"][0]
    assert len(images) == 9
    assert {image.mode for image in images} == {"RGB"}
    assert data.skipped == []
    pixels = resize_all(data, "train", 8)
    assert pixels.shape == (len(data.splits["train"][0]), 3, 8, 8)
    assert pixels.dtype == torch.uint8


def test_a_16_bit_grey_image_keeps_its_tones(tmp_path):
    """A 16-bit PNG (common for scans and microscopy) is scaled to 8 bits, not clipped to white."""
    root = two_class_folder(tmp_path / "data")
    (root / "val" / "cats").mkdir(parents=True)
    gradient = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)  # 0 .. 65535
    Image.fromarray(gradient).save(root / "val" / "cats" / "deep.png")
    save_image(root / "val" / "dogs" / "0.png", "RGB")
    data = load(root)
    deep = data.splits["val"][2].index(str(Path("val/cats/deep.png")))
    red = np.array(data.splits["val"][0][deep])[..., 0].astype(int)
    assert np.abs(red - gradient // 257).max() <= 1


def test_a_transparent_pixel_becomes_white(tmp_path):
    root = two_class_folder(tmp_path / "data")
    (root / "val" / "cats").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 4), dtype=np.uint8), "RGBA").save(root / "val" / "cats" / "clear.png")
    save_image(root / "val" / "dogs" / "0.png", "RGB")
    data = load(root)
    clear = data.splits["val"][2].index(str(Path("val/cats/clear.png")))
    assert np.array(data.splits["val"][0][clear]).min() == 255


def test_unreadable_files_are_skipped_counted_and_named_with_a_reason(tiny_folder):
    dark = tiny_folder / "train" / "dark"
    (dark / "truncated.png").write_bytes(png_bytes()[:200])
    (dark / "empty.png").write_bytes(b"")
    (dark / "notes.png").write_text("this is text, not an image\n")
    data = ImageClassification().load(tiny_folder, seed=0, val_fraction=0.25, options={})
    skipped = {entry["file"]: entry["reason"] for entry in data.report["skipped"]}
    assert len(data.report["skipped"]) == 3
    assert set(skipped) == {"train/dark/truncated.png", "train/dark/empty.png", "train/dark/notes.png"}
    assert skipped["train/dark/empty.png"] == "empty file"
    assert skipped["train/dark/truncated.png"].startswith("not a readable image")
    assert skipped["train/dark/notes.png"].startswith("not a readable image")
    counts = data.report["counts"]
    assert counts["train"]["dark"] + counts["val"]["dark"] == 12


def test_hidden_files_are_neither_loaded_nor_reported(tiny_folder):
    (tiny_folder / "train" / "dark" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (tiny_folder / "train" / ".cache").mkdir()
    data = load(tiny_folder)
    assert data.skipped == []
    assert data.classes == ["dark", "light", "striped"]


# -- folders that cannot be used ---------------------------------------------------------------------

def test_an_empty_class_folder_is_a_data_error_naming_it(tiny_folder):
    (tiny_folder / "train" / "blank").mkdir()
    with pytest.raises(DataError, match=r"train/blank holds no readable image"):
        load(tiny_folder)


def test_a_class_folder_of_only_unreadable_files_is_a_data_error_naming_it(tiny_folder):
    (tiny_folder / "train" / "broken").mkdir()
    (tiny_folder / "train" / "broken" / "a.png").write_text("not an image")
    with pytest.raises(DataError, match=r"train/broken holds no readable image"):
        load(tiny_folder)


def test_a_single_class_is_a_data_error(tmp_path):
    save_image(tmp_path / "data" / "train" / "only" / "a.png", "RGB")
    with pytest.raises(DataError, match="only the class 'only'.*at least two"):
        load(tmp_path / "data")


def test_a_folder_without_train_is_a_data_error(tmp_path):
    save_image(tmp_path / "data" / "images" / "a" / "a.png", "RGB")
    with pytest.raises(DataError, match="has no train/ folder"):
        load(tmp_path / "data")


def test_a_missing_data_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="data folder not found.*nowhere"):
        load(tmp_path / "nowhere")


@pytest.mark.parametrize("split", ["val", "test"])
def test_a_class_that_train_lacks_is_a_data_error_naming_it(tiny_folder, split):
    save_image(tiny_folder / split / "spotted" / "a.png", "RGB")
    with pytest.raises(DataError, match=rf"{split} has class folders that train/ lacks: spotted"):
        load(tiny_folder)


def test_a_class_too_small_to_split_is_a_data_error(tmp_path):
    root = two_class_folder(tmp_path / "data")
    save_image(root / "train" / "rare" / "a.png", "RGB")
    with pytest.raises(DataError, match="class 'rare'.*at least 2 per class"):
        load(root)


# -- splits --------------------------------------------------------------------------------------------

def test_without_val_the_split_is_stratified(tiny_folder):
    data = load(tiny_folder, val_fraction=0.25)
    assert data.val_from_train
    _, val_labels, _ = data.splits["val"]
    _, train_labels, _ = data.splits["train"]
    assert sorted(val_labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len(train_labels) == 27
    assert not set(data.splits["val"][2]) & set(data.splits["train"][2])


def test_every_class_reaches_val_even_when_the_classes_are_imbalanced(tmp_path):
    root = tmp_path / "data"
    for cls, count in (("rare", 2), ("scarce", 2), ("common", 30)):
        for i in range(count):
            save_image(root / "train" / cls / f"{i}.png", "RGB", value=(37 * i) % 250)
    data = load(root, seed=0, val_fraction=0.2)
    assert set(data.splits["val"][1]) == {0, 1, 2}
    assert set(data.splits["train"][1]) == {0, 1, 2}


def test_a_large_validation_share_still_leaves_every_class_an_image_to_train_on(tmp_path):
    root = tmp_path / "data"
    for cls in ("a", "b", "c"):
        for i in range(3):
            save_image(root / "train" / cls / f"{i}.png", "RGB", value=40 * i)
    data = load(root, val_fraction=0.8)
    assert sorted(data.splits["train"][1]) == [0, 1, 2]
    assert sorted(data.splits["val"][1]) == [0, 0, 1, 1, 2, 2]


def test_the_split_is_the_same_for_the_same_seed(tiny_folder):
    assert load(tiny_folder, seed=7).splits["val"][2] == load(tiny_folder, seed=7).splits["val"][2]


def test_the_split_differs_for_another_seed(tiny_folder):
    assert load(tiny_folder, seed=0).splits["val"][2] != load(tiny_folder, seed=1).splits["val"][2]


def test_a_val_folder_is_used_as_is(tiny_folder):
    shutil.copytree(tiny_folder / "test", tiny_folder / "val")
    data = load(tiny_folder, val_fraction=0.5)
    assert not data.val_from_train
    assert all(path.startswith("val/") for path in data.splits["val"][2])
    assert len(data.splits["val"][2]) == 36
    assert len(data.splits["train"][2]) == 36
    assert data.report()["val_from_train"] is False


def test_the_test_split_is_kept_apart(tiny_folder):
    loaded = ImageClassification().load(tiny_folder, seed=0, val_fraction=0.25, options={})
    assert loaded.has_test
    assert loaded.label_names == ["dark", "light", "striped"]
    assert loaded.report["counts"]["test"] == {"dark": 12, "light": 12, "striped": 12}


# -- resizing once -------------------------------------------------------------------------------------

def test_each_resolution_is_computed_once(tiny_folder):
    data = load(tiny_folder)
    first = resize_all(data, "train", 16)
    assert resize_all(data, "train", 16) is first
    other = resize_all(data, "train", 20)
    assert other is not first
    assert first.shape == (27, 3, 16, 16) and other.shape == (27, 3, 20, 20)


def test_resizing_crops_the_centre_of_the_shorter_side(tmp_path):
    root = two_class_folder(tmp_path / "data")
    wide = np.zeros((10, 30, 3), dtype=np.uint8)
    wide[:, 10:20] = 255  # a white middle third
    (root / "val" / "cats").mkdir(parents=True)
    (root / "val" / "dogs").mkdir(parents=True)
    Image.fromarray(wide).save(root / "val" / "cats" / "wide.png")
    save_image(root / "val" / "dogs" / "0.png", "RGB")
    data = load(root)
    pixels = resize_all(data, "val", 10, "nearest")
    index = data.splits["val"][2].index(str(Path("val/cats/wide.png")))
    assert pixels[index].min() == 255


def test_preparing_twice_at_the_same_resolution_shares_the_tensors(tiny_folder, tiny_backbone):
    task = ImageClassification()
    loaded = task.load(tiny_folder, seed=0, val_fraction=0.25, options={})
    first = task.prepare(loaded, tiny_backbone, {"resolution": 16})
    second = task.prepare(loaded, tiny_backbone, {"resolution": 16, "lr": 0.1})
    assert second.train.inputs is first.train.inputs
    assert second.val.inputs is first.val.inputs
    assert second.test.inputs is first.test.inputs
    assert task.prepare(loaded, tiny_backbone, {"resolution": 24}).train.inputs is not first.train.inputs


def test_prepared_batches_are_normalised_with_the_backbone_mean_and_std(tiny_folder, tiny_backbone):
    task = ImageClassification()
    loaded = task.load(tiny_folder, seed=0, val_fraction=0.25, options={})
    split = task.prepare(loaded, tiny_backbone, {"resolution": 16}).val
    batch, labels = next(split.batches(4))
    pre = tiny_backbone.preprocessing()
    mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"]).view(1, 3, 1, 1)
    expected = (split.inputs[:4].float() / 255 - mean) / std
    assert torch.allclose(batch, expected)
    assert torch.equal(labels, split.labels[:4])


# -- fingerprint -----------------------------------------------------------------------------------------

def test_the_fingerprint_is_stable_for_unchanged_data(tiny_folder):
    assert load(tiny_folder, seed=0).fingerprint == load(tiny_folder, seed=1).fingerprint


def test_the_fingerprint_changes_when_an_image_changes(tiny_folder):
    before = load(tiny_folder).fingerprint
    path = tiny_folder / "train" / "dark" / "train_000.png"
    pixels = np.array(Image.open(path))
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(path)
    assert load(tiny_folder).fingerprint != before


def test_the_fingerprint_changes_when_an_image_moves_to_another_class(tiny_folder):
    before = load(tiny_folder).fingerprint
    shutil.move(tiny_folder / "train" / "dark" / "train_000.png", tiny_folder / "train" / "light" / "moved.png")
    assert load(tiny_folder).fingerprint != before

