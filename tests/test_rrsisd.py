"""The RRSIS-D reader on a fixture written in the exact on-disk format: RLE (compressed and
uncompressed) and polygon segmentations, an 800×801 image with an 800×800 mask, all sentences of a ref,
and malformed inputs that must fail with the file named."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from provg.data import load_dataset
from provg.data.safe_pickle import UnsafePickleError


def _rle(mask: np.ndarray) -> dict:
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode()}


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def write_fixture(root: Path) -> dict:
    """Three images, four refs; returns the masks drawn so tests can compare."""
    image_dir = root / "images" / "rrsisd" / "JPEGImages"
    image_dir.mkdir(parents=True)
    (root / "rrsisd").mkdir()
    rng = np.random.default_rng(0)
    sizes = {1: (800, 800), 2: (801, 800), 3: (40, 60)}  # (height, width) of the image files
    for image_id, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            image_dir / f"{image_id:05d}.jpg"
        )
    m1 = np.zeros((800, 800), bool)
    m1[100:150, 200:260] = True
    m2 = np.zeros((800, 800), bool)  # the image is 800×801 (h 801): the mask is 800×800
    m2[700:800, 10:30] = True
    m3 = np.zeros((40, 60), bool)
    m3[5:9, 7:12] = True
    masks = {"rle": m1, "mismatch": m2, "uncompressed": m3}
    annotations = [
        {
            "id": 11,
            "image_id": 1,
            "category_id": 1,
            "segmentation": _rle(m1),
            "bbox": [200, 100, 60, 50],
            "area": 3000,
        },
        {
            "id": 12,
            "image_id": 1,
            "category_id": 1,
            "segmentation": [[400, 400, 440, 400, 440, 430, 400, 430]],
            "bbox": [400, 400, 40, 30],
            "area": 1200,
        },
        {
            "id": 21,
            "image_id": 2,
            "category_id": 2,
            "segmentation": _rle(m2),
            "bbox": [10, 700, 20, 100],
            "area": 2000,
        },
        {
            "id": 31,
            "image_id": 3,
            "category_id": 2,
            "segmentation": _uncompressed_rle(m3),
            "bbox": [7, 5, 5, 4],
            "area": 20,
        },
    ]
    instances = {
        "images": [
            {"id": 1, "file_name": "00001.jpg", "height": 800, "width": 800},
            {"id": 2, "file_name": "00002.jpg", "height": 800, "width": 800},
            {"id": 3, "file_name": "00003.jpg", "height": 40, "width": 60},
        ],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "vehicle"}, {"id": 2, "name": "ship"}],
    }

    def ref(ref_id, ann_id, image_id, split, sentences):
        sents = [
            {"raw": s, "sent": s, "sent_id": ref_id * 10 + i, "tokens": s.split()}
            for i, s in enumerate(sentences)
        ]
        return {
            "ref_id": ref_id,
            "ann_id": ann_id,
            "image_id": image_id,
            "category_id": 1,
            "split": split,
            "sent_ids": [s["sent_id"] for s in sents],
            "sentences": sents,
            "file_name": f"{image_id:05d}.jpg",
        }

    refs = [
        ref(1, 11, 1, "train", ["the vehicle on the upper left"]),
        ref(2, 12, 1, "test", ["the vehicle in the middle", "a gray vehicle near the centre"]),
        ref(3, 21, 2, "test", ["a ship at the bottom left"]),
        ref(4, 31, 3, "val", ["the small ship"]),
    ]
    with open(root / "rrsisd" / "refs(unc).p", "wb") as handle:
        pickle.dump(refs, handle)
    (root / "rrsisd" / "instances.json").write_text(json.dumps(instances))
    return masks


@pytest.fixture
def fixture_root(tmp_path):
    masks = write_fixture(tmp_path)
    return tmp_path, masks


def test_counts_splits_and_all_sentences(fixture_root):
    root, _ = fixture_root
    assert len(load_dataset("rrsisd", root, "train")) == 1
    test = load_dataset("rrsisd", root, "test")
    assert len(test) == 3  # ref 2 has two sentences, both are samples
    assert [test[i]["text"] for i in range(3)] == [
        "the vehicle in the middle",
        "a gray vehicle near the centre",
        "a ship at the bottom left",
    ]
    assert len(load_dataset("rrsisd", root, "val")) == 1


def test_rle_sample(fixture_root):
    root, masks = fixture_root
    sample = load_dataset("rrsisd", root, "train")[0]
    assert sample["image"].shape == (3, 800, 800) and sample["image"].dtype == torch.float32
    assert sample["mask"].dtype == torch.bool
    assert torch.equal(sample["mask"], torch.from_numpy(masks["rle"]))
    assert sample["box"].tolist() == [200.0, 100.0, 260.0, 150.0]
    assert sample["category"] == "vehicle"


def test_polygon_sample(fixture_root):
    root, _ = fixture_root
    sample = load_dataset("rrsisd", root, "test")[0]
    rows, cols = sample["mask"].nonzero(as_tuple=True)
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (400, 429, 400, 439)
    assert sample["box"].tolist() == [400.0, 400.0, 440.0, 430.0]


def test_uncompressed_rle_sample(fixture_root):
    root, masks = fixture_root
    sample = load_dataset("rrsisd", root, "val")[0]
    assert torch.equal(sample["mask"], torch.from_numpy(masks["uncompressed"]))


def test_800x801_image_with_800x800_mask(fixture_root):
    root, masks = fixture_root
    padded = load_dataset("rrsisd", root, "test")[2]
    assert padded["image"].shape == (3, 801, 800) and padded["mask"].shape == (801, 800)
    assert torch.equal(padded["mask"][:800], torch.from_numpy(masks["mismatch"]))
    assert not padded["mask"][800].any()
    assert padded["box"].tolist() == [10.0, 700.0, 30.0, 800.0]
    resized = load_dataset("rrsisd", root, "test", size_mismatch="resize")[2]
    assert resized["mask"].shape == (801, 800)
    assert resized["box"][3] == pytest.approx(800 * 801 / 800)
    with pytest.raises(ValueError, match=r"00002\.jpg.*800×800 but the image is 801×800"):
        load_dataset("rrsisd", root, "test", size_mismatch="error")[2]


def test_transform_keeps_image_box_and_mask_consistent(fixture_root):
    root, _ = fixture_root
    sample = load_dataset("rrsisd", root, "train", image_size=100)[0]
    assert sample["image"].shape == (3, 100, 100) and sample["mask"].shape == (100, 100)
    assert sample["box"].tolist() == pytest.approx([25.0, 12.5, 32.5, 18.75])
    rows, cols = sample["mask"].nonzero(as_tuple=True)
    assert (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1) == (25, 13, 33, 19)


def test_category_instances(fixture_root):
    root, _ = fixture_root
    test = load_dataset("rrsisd", root, "test")
    instances = test.category_instances(0)
    assert sorted(i["ann_id"] for i in instances) == [11, 12]


def test_missing_image_names_the_file(fixture_root):
    root, _ = fixture_root
    os.remove(root / "images" / "rrsisd" / "JPEGImages" / "00003.jpg")
    with pytest.raises(FileNotFoundError, match=r"00003\.jpg"):
        load_dataset("rrsisd", root, "val")[0]


def test_truncated_pickle_names_the_file(fixture_root):
    root, _ = fixture_root
    path = root / "rrsisd" / "refs(unc).p"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match=r"refs\(unc\)\.p: truncated or corrupt pickle"):
        load_dataset("rrsisd", root, "train")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_with_code_is_refused(fixture_root):
    root, _ = fixture_root
    path = root / "rrsisd" / "refs(unc).p"
    path.write_bytes(pickle.dumps([_Exploit()]))
    with pytest.raises(UnsafePickleError, match="refusing to load"):
        load_dataset("rrsisd", root, "train")
    assert not (root / "pwned").exists() and not Path("pwned").exists()


def test_empty_sentence_and_bad_split(fixture_root):
    root, _ = fixture_root
    path = root / "rrsisd" / "refs(unc).p"
    refs = pickle.loads(path.read_bytes())
    refs[0]["sentences"][0]["sent"] = "   "
    path.write_bytes(pickle.dumps(refs))
    with pytest.raises(ValueError, match=r"refs\(unc\)\.p: ref 1 has an empty sentence"):
        load_dataset("rrsisd", root, "train")
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset("rrsisd", root, "testB")
    with pytest.raises(KeyError, match="unknown dataset"):
        load_dataset("refcoco", root, "train")
