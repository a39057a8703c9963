"""The RISBench, RefSegRS, DIOR-RSVG and RSVG-HR readers on tiny fixtures written in the exact on-disk
formats (odd image sizes, hand-placed mask rectangles, hand-worked boxes), the real RSVG-HR train
annotations, malformed inputs that must fail naming the file, evaluation at the original resolution
(``keep_original``) and the JSON index round trip."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from provg.data import DATASETS, load_dataset, write_index
from provg.data.index import IndexDataset
from provg.data.io import load_image
from provg.data.rrsisd import load_image as rrsisd_load_image

from test_rrsisd import write_fixture as write_rrsisd_fixture

REAL_RSVG_HR_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsvg_hr_train.txt"


def _random_image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


def _assert_items_equal(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key] and type(a[key]) is type(b[key]), key


# --- RISBench -------------------------------------------------------------------------------------------

# id -> (height, width, mask rectangle rows r0:r1, cols c0:c1); the box is (c0, r0, c1, r1).
RIS_IMAGES = {
    "train_0001": (29, 37, (3, 10), (5, 12)),
    "train_0002": (31, 20, (0, 31), (19, 20)),  # a one-column strip on the right edge, all rows
    "val_0001": (16, 16, (7, 8), (7, 8)),  # a single pixel
}


def write_risbench(root: Path) -> dict[str, np.ndarray]:
    (root / "img_rgb").mkdir(parents=True)
    (root / "mask").mkdir()
    masks = {}
    for seed, (image_id, (h, w, (r0, r1), (c0, c1))) in enumerate(RIS_IMAGES.items()):
        Image.fromarray(_random_image(h, w, seed)).save(root / "img_rgb" / f"{image_id}.png")
        mask = np.zeros((h, w), np.uint8)
        mask[r0:r1, c0:c1] = 255
        Image.fromarray(mask).save(root / "mask" / f"{image_id}.png")
        masks[image_id] = mask > 0
    (root / "output_phrase_train.txt").write_text(
        "train_0001 the large building on the left\n"
        "train_0002 a road, running north  \n"
        "\n"
        "train_0001 building next to the pond\n"
    )
    # val/test name train_* images, as in the real release: looked up by id, not by split
    (root / "output_phrase_val.txt").write_text("train_0002 the long road\nval_0001 a tiny car\n")
    (root / "output_phrase_test.txt").write_text("train_0001 the building\n")
    return masks


@pytest.fixture
def risbench(tmp_path):
    return tmp_path, write_risbench(tmp_path)


def test_risbench_counts_texts_boxes_masks_ids(risbench):
    root, masks = risbench
    assert [len(load_dataset("risbench", root, s)) for s in ("train", "val", "test")] == [3, 2, 1]
    train = load_dataset("risbench", root, "train")
    assert [train[i]["text"] for i in range(3)] == [
        "the large building on the left",
        "a road, running north",
        "building next to the pond",
    ]
    first = train[0]
    assert first["image"].shape == (3, 29, 37) and first["image"].dtype == torch.float32
    assert float(first["image"].min()) >= 0 and float(first["image"].max()) <= 1
    assert first["box"].dtype == torch.float32 and first["box"].tolist() == [5.0, 3.0, 12.0, 10.0]
    assert first["mask"].dtype == torch.bool and torch.equal(
        first["mask"], torch.from_numpy(masks["train_0001"])
    )
    assert (first["image_id"], first["sent_id"]) == ("train_0001", 1)
    strip = train[1]
    assert strip["box"].tolist() == [19.0, 0.0, 20.0, 31.0] and int(strip["mask"].sum()) == 31
    assert (train[2]["image_id"], train[2]["sent_id"]) == ("train_0001", 4)  # line 3 is blank
    val = load_dataset("risbench", root, "val")
    assert val[0]["image_id"] == "train_0002" and val[0]["image"].shape == (3, 31, 20)
    assert val[1]["box"].tolist() == [7.0, 7.0, 8.0, 8.0]


def test_risbench_malformed_inputs_name_the_file(risbench):
    root, _ = risbench
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'val', 'test'\)"):
        load_dataset("risbench", root, "testA")
    phrases = root / "output_phrase_test.txt"
    phrases.write_text("train_0001 the building\ntrain_0002\n")
    with pytest.raises(ValueError, match=r"output_phrase_test\.txt, line 2: no phrase"):
        load_dataset("risbench", root, "test")
    phrases.write_text("train_0001    \n")
    with pytest.raises(ValueError, match=r"output_phrase_test\.txt, line 1: no phrase"):
        load_dataset("risbench", root, "test")
    (root / "output_phrase_val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"output_phrase_val\.txt"):
        load_dataset("risbench", root, "val")
    # wrong mask size
    Image.fromarray(np.zeros((29, 36), np.uint8)).save(root / "mask" / "train_0001.png")
    train = load_dataset("risbench", root, "train")
    with pytest.raises(
        ValueError, match=r"mask[/\\]train_0001\.png: mask is 29×36 but the image .* is 29×37"
    ):
        train[0]
    # missing image, missing mask
    (root / "img_rgb" / "train_0002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"image not found: .*train_0002\.png"):
        train[1]
    (root / "mask" / "train_0001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"mask not found: .*train_0001\.png"):
        train[0]


def test_risbench_empty_mask_policy(risbench):
    root, _ = risbench
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "mask" / "val_0001.png")
    with pytest.raises(ValueError, match=r"val_0001\.png: empty mask .*line 2 of .*output_phrase_val\.txt"):
        load_dataset("risbench", root, "val")[1]
    kept = load_dataset("risbench", root, "val", empty_mask="zero_box")[1]
    assert kept["box"].tolist() == [0.0, 0.0, 0.0, 0.0] and not kept["mask"].any()
    with pytest.raises(ValueError, match="empty_mask must be one of"):
        load_dataset("risbench", root, "val", empty_mask="skip")


def test_truncated_image_names_the_file(risbench):
    root, _ = risbench
    path = root / "img_rgb" / "val_0001.png"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"val_0001\.png: cannot decode image"):
        load_dataset("risbench", root, "val")[1]


# --- RefSegRS -------------------------------------------------------------------------------------------


def write_refsegrs(root: Path) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for seed, (image_id, (h, w)) in enumerate({"0": (23, 41), "1": (30, 30), "7": (19, 25)}.items()):
        Image.fromarray(_random_image(h, w, seed + 10)).save(root / "images" / f"{image_id}.tif")
    noisy = np.full((23, 41), 50, np.uint8)  # value 50 is background: foreground is > 50
    noisy[4:9, 30:40] = 51
    Image.fromarray(noisy).save(root / "masks" / "0.tif")
    square = np.zeros((30, 30), np.uint8)
    square[10:20, 0:5] = 255
    Image.fromarray(square).save(root / "masks" / "1.tif")
    corner = np.zeros((19, 25), np.uint8)
    corner[18, 24] = 200
    Image.fromarray(corner).save(root / "masks" / "7.tif")
    (root / "output_phrase_train.txt").write_text(
        "0 the vehicle on the upper right\n1 a building on the left\n"
    )
    (root / "output_phrase_val.txt").write_text("7 the car in the bottom right corner\n")
    (root / "output_phrase_test.txt").write_text("1 left building\n0 vehicle\n7 car\n")


def test_refsegrs_threshold_boxes_and_ids(tmp_path):
    write_refsegrs(tmp_path)
    assert [len(load_dataset("refsegrs", tmp_path, s)) for s in ("train", "val", "test")] == [2, 1, 3]
    train = load_dataset("refsegrs", tmp_path, "train")
    first = train[0]
    assert first["image"].shape == (3, 23, 41)
    assert first["box"].tolist() == [30.0, 4.0, 40.0, 9.0] and int(first["mask"].sum()) == 50
    assert (first["text"], first["image_id"], first["sent_id"]) == ("the vehicle on the upper right", "0", 1)
    assert train[1]["box"].tolist() == [0.0, 10.0, 5.0, 20.0]
    corner = load_dataset("refsegrs", tmp_path, "val")[0]
    assert corner["box"].tolist() == [24.0, 18.0, 25.0, 19.0] and corner["mask"][18, 24]
    assert [s["image_id"] for s in load_dataset("refsegrs", tmp_path, "test")] == ["1", "0", "7"]


def test_refsegrs_malformed_inputs_name_the_file(tmp_path):
    write_refsegrs(tmp_path)
    Image.fromarray(np.zeros((30, 31), np.uint8)).save(tmp_path / "masks" / "1.tif")
    with pytest.raises(ValueError, match=r"masks[/\\]1\.tif: mask is 30×31 but the image .*1\.tif is 30×30"):
        load_dataset("refsegrs", tmp_path, "train")[1]
    (tmp_path / "images" / "7.tif").unlink()
    with pytest.raises(FileNotFoundError, match=r"images[/\\]7\.tif"):
        load_dataset("refsegrs", tmp_path, "val")[0]
    (tmp_path / "output_phrase_val.txt").write_text("")
    with pytest.raises(ValueError, match=r"output_phrase_val\.txt: no samples"):
        load_dataset("refsegrs", tmp_path, "val")


# --- DIOR-RSVG ------------------------------------------------------------------------------------------

DIOR_XML = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<annotation>
  <filename>{filename}</filename>
  <source><database>DIOR</database></source>
  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>
  <segmented>0</segmented>
{objects}</annotation>
"""
DIOR_OBJECT = """  <object>
    <name>{name}</name>
    <pose>Unspecified</pose>
    <bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox>
    <description>{text}</description>
  </object>
"""
# Written in this (unsorted) order; global indices follow sorted file names: 00001, 00002, 00010.
DIOR_FILES = {
    "00010.xml": (
        "00010.jpg",
        33,
        27,
        [
            ("ship", (1, 2, 30, 20), "a ship in the middle"),
            ("harbor", (0, 0, 33, 5), "the harbor on the top"),
        ],
    ),
    "00001.xml": (
        "00001.jpg",
        40,
        35,
        [
            ("golffield", (3, 4, 20, 30), "A green and brown golf field"),
            ("dam", (21, 0, 39, 10), "the dam on the upper right"),
        ],
    ),
    "00002.xml": ("00002.jpg", 25, 21, [("vehicle", (5, 6, 9, 8), "a small vehicle")]),
}


def write_dior(root: Path) -> None:
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for seed, (xml_name, (filename, width, height, objects)) in enumerate(DIOR_FILES.items()):
        body = "".join(DIOR_OBJECT.format(name=n, box=b, text=t) for n, b, t in objects)
        xml = DIOR_XML.format(filename=filename, width=width, height=height, objects=body)
        (root / "Annotations" / xml_name).write_text(xml)
        Image.fromarray(_random_image(height, width, seed + 20)).save(root / "JPEGImages" / filename)
    # global indices: 0, 1 -> 00001.xml; 2 -> 00002.xml; 3, 4 -> 00010.xml
    (root / "train.txt").write_text("0\n3\n")
    (root / "val.txt").write_text("1\n")
    (root / "test.txt").write_text("4\n2\n4\n")  # unsorted and repeated: read in global order, once


@pytest.fixture
def dior(tmp_path):
    write_dior(tmp_path)
    return tmp_path


def test_dior_rsvg_splits_boxes_texts_ids(dior):
    train = load_dataset("dior_rsvg", dior, "train")
    assert len(train) == 2 and len(load_dataset("dior_rsvg", dior, "val")) == 1
    first = train[0]
    assert set(first) == {"image", "text", "box", "image_id", "sent_id", "category"}  # box only: no mask
    assert first["image"].shape == (3, 35, 40)
    assert first["box"].dtype == torch.float32 and first["box"].tolist() == [3.0, 4.0, 20.0, 30.0]
    assert (first["text"], first["image_id"], first["sent_id"], first["category"]) == (
        "A green and brown golf field",
        "00001",
        0,
        "golffield",
    )
    assert (train[1]["text"], train[1]["image_id"], train[1]["sent_id"]) == (
        "a ship in the middle",
        "00010",
        3,
    )
    assert train[1]["image"].shape == (3, 27, 33)
    test = load_dataset("dior_rsvg", dior, "test")
    assert [(s["sent_id"], s["text"]) for s in test] == [(2, "a small vehicle"), (4, "the harbor on the top")]
    assert test[0]["box"].tolist() == [5.0, 6.0, 9.0, 8.0]


def test_dior_rsvg_by_tag_agrees_with_positional_reading(dior):
    """The reference reads member[2] as the bndbox (children xmin, ymin, xmax, ymax) and member[3] as the
    description, enumerating objects over the XML files in name order; the reader finds them by tag."""
    (dior / "train.txt").write_text("\n".join(str(i) for i in range(5)) + "\n")
    positional = []
    for path in sorted((dior / "Annotations").glob("*.xml")):
        for member in ET.parse(path).getroot().findall("object"):
            positional.append(([float(member[2][k].text) for k in range(4)], member[3].text))
    data = load_dataset("dior_rsvg", dior, "train")
    assert [(data.record(i).box, data.record(i).text) for i in range(len(data))] == [
        (tuple(box), text) for box, text in positional
    ]


def test_dior_rsvg_malformed_inputs_name_the_file(dior):
    with pytest.raises(ValueError, match=r"split must be one of"):
        load_dataset("dior_rsvg", dior, "trainval")
    (dior / "val.txt").write_text("1\n5\n")
    with pytest.raises(ValueError, match=r"val\.txt: object index 5 is out of range; .* hold 5 objects"):
        load_dataset("dior_rsvg", dior, "val")
    (dior / "val.txt").write_text("1\none\n")
    with pytest.raises(ValueError, match=r"val\.txt, line 2: expected an object index, got 'one'"):
        load_dataset("dior_rsvg", dior, "val")
    (dior / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"split file not found: .*val\.txt"):
        load_dataset("dior_rsvg", dior, "val")
    xml = dior / "Annotations" / "00002.xml"
    text = xml.read_text()
    xml.write_text(text.replace("<xmin>5</xmin>", "<xmin>5a</xmin>"))
    with pytest.raises(ValueError, match=r"00002\.xml, object 0: <xmin> is not a number: '5a'"):
        load_dataset("dior_rsvg", dior, "test")
    xml.write_text(text.replace("<description>a small vehicle</description>", ""))
    with pytest.raises(ValueError, match=r"00002\.xml, object 0: no <description>"):
        load_dataset("dior_rsvg", dior, "test")
    xml.write_text(text.replace("</annotation>", ""))
    with pytest.raises(ValueError, match=r"00002\.xml: malformed XML"):
        load_dataset("dior_rsvg", dior, "train")
    xml.write_text(text)
    (dior / "JPEGImages" / "00002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"image not found: .*00002\.jpg"):
        load_dataset("dior_rsvg", dior, "test")[0]


def test_inverted_box_policy(dior):
    xml = dior / "Annotations" / "00002.xml"
    xml.write_text(xml.read_text().replace("<xmin>5</xmin>", "<xmin>12</xmin>"))  # xmin 12 > xmax 9
    assert load_dataset("dior_rsvg", dior, "test")[0]["box"].tolist() == [9.0, 6.0, 12.0, 8.0]
    assert load_dataset("dior_rsvg", dior, "test", inverted_box="keep")[0]["box"].tolist() == [
        12.0,
        6.0,
        9.0,
        8.0,
    ]
    with pytest.raises(
        ValueError, match=r"00002\.xml, object 0: box \[12\.0, 6\.0, 9\.0, 8\.0\] has x2 < x1"
    ):
        load_dataset("dior_rsvg", dior, "test", inverted_box="error")


# --- RSVG-HR --------------------------------------------------------------------------------------------


def write_rsvg_hr(root: Path) -> None:
    (root / "Annotations").mkdir(parents=True)
    (root / "images").mkdir()
    for seed, (name, (h, w)) in enumerate(
        {"a_1024_sport.jpg": (37, 29), "b_512_sport.jpg": (20, 24)}.items()
    ):
        Image.fromarray(_random_image(h, w, seed + 30)).save(root / "images" / name)
    (root / "Annotations" / "rsvg_hr_train.txt").write_text(
        "a_1024_sport.jpg,1.5,2.0,20.25,30,a swimming pool on the left\n"
        "b_512_sport.jpg,3,4,10,12,the pool, next to a road, on the right\n"
        "\n"
        "a_1024_sport.jpg,2.0,3.0,9,50,12.5,a pool written with a decimal comma\n"
    )
    (root / "Annotations" / "rsvg_hr_test.txt").write_text("b_512_sport.jpg,0,0,24,20,the whole image\n")


def test_rsvg_hr_fixture(tmp_path):
    write_rsvg_hr(tmp_path)
    train = load_dataset("rsvg_hr", tmp_path, "train")
    assert len(train) == 3 and len(load_dataset("rsvg_hr", tmp_path, "test")) == 1
    first = train[0]
    assert set(first) == {"image", "text", "box", "image_id", "sent_id"}
    assert first["image"].shape == (3, 37, 29)
    assert first["box"].tolist() == [1.5, 2.0, 20.25, 30.0]
    assert (first["text"], first["image_id"], first["sent_id"]) == (
        "a swimming pool on the left",
        "a_1024_sport",
        1,
    )
    assert train[1]["text"] == "the pool, next to a road, on the right"  # commas kept
    assert train[1]["box"].tolist() == [3.0, 4.0, 10.0, 12.0]
    repaired = train.record(2)
    assert repaired.box == (2.0, 3.0, 9.5, 12.5) and repaired.ids["sent_id"] == 4
    assert repaired.text == "a pool written with a decimal comma"
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'test'\)"):
        load_dataset("rsvg_hr", tmp_path, "val")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a.jpg,1,2,3,4", r"line 2: expected <image>,<x1>,<y1>,<x2>,<y2>,<expression>, got 5 field"),
        ("a.jpg,1,2,x3,4,a pool", r"line 2: x2 is not a number: 'x3'"),
        ("a.jpg,1,2,3,4,   ", r"line 2: no expression"),
        (",1,2,3,4,a pool", r"line 2: no image file name"),
        ("a.jpg,1.5,2.5,3.5,4.5,5,a pool", r"line 2: six numbers before the expression .* no way"),
        ("a.jpg,1.5,2,3,4,5,a pool", r"line 2: six numbers .* more than one way"),  # 2.3 or 3.4
    ],
)
def test_rsvg_hr_malformed_lines_name_the_file(tmp_path, line, message):
    write_rsvg_hr(tmp_path)
    (tmp_path / "Annotations" / "rsvg_hr_test.txt").write_text(f"b_512_sport.jpg,0,0,24,20,ok\n{line}\n")
    with pytest.raises(ValueError, match=r"rsvg_hr_test\.txt, " + message):
        load_dataset("rsvg_hr", tmp_path, "test")


def test_rsvg_hr_real_train_annotations(tmp_path):
    if not REAL_RSVG_HR_TRAIN.exists():
        pytest.skip(f"{REAL_RSVG_HR_TRAIN} is not here")
    (tmp_path / "Annotations").mkdir()
    shutil.copy(REAL_RSVG_HR_TRAIN, tmp_path / "Annotations" / "rsvg_hr_train.txt")
    train = load_dataset("rsvg_hr", tmp_path, "train")
    assert len(train) == 2151
    first = train.record(0)
    assert first.image == tmp_path / "images" / "483816_4952275_1024_32615_sport_swimming.jpg"
    assert first.box == (740.5, 222.5, 776.69, 258.06) and first.ids == {
        "image_id": "483816_4952275_1024_32615_sport_swimming",
        "sent_id": 1,
    }
    assert first.text == "search a swimming pool on the upper right and it is on upper left of a pond"
    fifth = train.record(4)
    assert fifth.box == (369.25, 769.75, 402.06, 804.75) and fifth.text == "a swimming pool on the bottom"
    # line 18 writes x2 as "216,00": a decimal comma
    decimal_comma = train.record(17)
    assert decimal_comma.box == (170.0, 774.0, 216.0, 803.21)
    assert (
        decimal_comma.text
        == "find a swimming pool on the lower left and it is on the bottom of a parking lot"
    )
    # line 450 has x2 < x1 (556.5 > 511.1): sorted by default, as written with inverted_box="keep"
    assert train.record(449).box == (511.1, 461.5, 556.5, 602.12)
    kept = load_dataset("rsvg_hr", tmp_path, "train", inverted_box="keep")
    assert kept.record(449).box == (556.5, 461.5, 511.1, 602.12)
    last = train.record(2150)
    assert last.ids["sent_id"] == 2151 and last.text.endswith("ground track field")
    assert all(r.text and r.box[0] <= r.box[2] and r.box[1] <= r.box[3] for r in train.entries)


# --- evaluation resolution and the JSON index -----------------------------------------------------------


def test_keep_original(risbench, dior):
    root, masks = risbench
    sample = load_dataset("risbench", root, "train", image_size=16, keep_original=True)[0]
    assert sample["image"].shape == (3, 16, 16) and sample["mask"].shape == (16, 16)
    assert sample["original_size"] == (29, 37)
    assert sample["original_box"].tolist() == [5.0, 3.0, 12.0, 10.0]
    assert torch.equal(sample["original_mask"], torch.from_numpy(masks["train_0001"]))
    assert sample["box"].tolist() == pytest.approx([5 * 16 / 37, 3 * 16 / 29, 12 * 16 / 37, 10 * 16 / 29])
    default = load_dataset("risbench", root, "train", image_size=16)[0]
    assert "original_box" not in default and "original_mask" not in default
    assert "original_size" in default
    same_size = load_dataset("risbench", root, "val", image_size=16, keep_original=True)[1]  # 16×16 already
    assert same_size["original_box"].tolist() == [7.0, 7.0, 8.0, 8.0] and same_size[
        "original_mask"
    ].shape == (16, 16)
    box_only = load_dataset("dior_rsvg", dior, "train", image_size=8, keep_original=True)[0]
    assert box_only["original_box"].tolist() == [3.0, 4.0, 20.0, 30.0] and "original_mask" not in box_only
    with pytest.raises(ValueError, match="keep_original needs image_size"):
        load_dataset("risbench", root, "train", keep_original=True)


def test_rrsisd_index_round_trip(tmp_path):
    source_root = tmp_path / "rrsisd_root"
    write_rrsisd_fixture(source_root)
    index_dir = tmp_path / "index"
    for split in ("train", "val", "test"):
        original = load_dataset("rrsisd", source_root, split)
        path = write_index(original, index_dir / f"{split}.json")
        assert path == index_dir / f"{split}.json" and not list(index_dir.glob(".*.tmp"))
        document = json.loads(path.read_text())
        assert document["format"] == "provg-index" and len(document["samples"]) == len(original)
        assert all("counts" in s["mask"] for s in document["samples"])
        restored = load_dataset("index", index_dir, split)
        assert len(restored) == len(original)
        for i in range(len(original)):
            _assert_items_equal(restored[i], original[i])
    # the 800×801 image with an 800×800 mask: the index holds the padded mask the reader produced
    assert load_dataset("index", index_dir, "test")[2]["mask"].shape == (801, 800)
    with pytest.raises(ValueError, match=r"split must be one of \('test', 'train', 'val'\)"):
        load_dataset("index", index_dir, "testB")


def test_index_round_trip_of_every_reader(tmp_path, risbench, dior):
    write_refsegrs(tmp_path / "refsegrs")
    write_rsvg_hr(tmp_path / "rsvg_hr")
    sources = {
        "risbench": risbench[0],
        "refsegrs": tmp_path / "refsegrs",
        "dior_rsvg": dior,
        "rsvg_hr": tmp_path / "rsvg_hr",
    }
    for name, root in sources.items():
        original = load_dataset(name, root, "test")
        write_index(original, tmp_path / "indices" / name / "test.json")
        restored = load_dataset("index", tmp_path / "indices" / name, "test", image_size=12)
        resized = load_dataset(name, root, "test", image_size=12)
        for i in range(len(original)):
            _assert_items_equal(restored[i], resized[i])


def test_index_moved_images_and_malformed_index(tmp_path, risbench):
    root, _ = risbench
    index_dir = tmp_path / "index"
    write_index(load_dataset("risbench", root, "val"), index_dir / "val.json")
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    shutil.rmtree(root / "img_rgb")
    with pytest.raises(FileNotFoundError, match=r"image not found"):
        load_dataset("index", index_dir, "val")[0]
    restored = IndexDataset(index_dir, "val", image_root=moved)
    _assert_items_equal(restored[0], load_dataset("risbench", moved, "val")[0])
    path = index_dir / "val.json"
    document = json.loads(path.read_text())
    document["samples"][1]["box"] = [1, 2, "3", 4]
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"val\.json, sample 1: box must be 4 numbers"):
        load_dataset("index", index_dir, "val")
    path.write_text(json.dumps(document)[:-20])
    with pytest.raises(ValueError, match=r"val\.json: not valid JSON"):
        load_dataset("index", index_dir, "val")
    path.write_text(json.dumps({"samples": []}))
    with pytest.raises(ValueError, match=r"val\.json: not a provg index"):
        load_dataset("index", index_dir, "val")
    with pytest.raises(FileNotFoundError, match=r"no index files"):
        load_dataset("index", tmp_path / "moved", "val")


def test_registry_and_load_image_import():
    assert set(DATASETS) == {"synthrs", "rrsisd", "risbench", "refsegrs", "dior_rsvg", "rsvg_hr", "index"}
    assert rrsisd_load_image is load_image
