"""DIOR-RSVG reader (DESIGN §4; box only, no masks).

Layout under the root, as the reference loader (MGVLF, RSVG-pytorch; reused by LQVG) reads it:

- ``Annotations/*.xml``: VOC-like, one file per image: ``<filename>`` and one ``<object>`` per referred
  object, with children ``<name>`` (category), ``<pose>``, ``<bndbox>`` (``<xmin>``, ``<ymin>``,
  ``<xmax>``, ``<ymax>``, pixels) and ``<description>`` (the expression).
- ``JPEGImages/<filename>``.
- ``train.txt``, ``val.txt``, ``test.txt``: one global object index per line. Objects are numbered from
  0 over all XML files, file by file and within a file in document order.

Decisions:

- The reference reads an object's children positionally: ``member[2]`` is the bndbox (its children
  0–3 being xmin, ymin, xmax, ymax) and ``member[3]`` the description. This reader finds them by tag
  name, which gives the same values on files in the released layout (name, pose, bndbox, description)
  and stays right if a child is added or missing; a missing tag is an error naming the file.
- XML files are enumerated in sorted file-name order (``00001.xml`` …), as DESIGN §4 specifies. The
  reference enumerates ``os.walk`` order, which is name order on the Windows filesystem its scripts
  were written for (its split path is ``'DIOR_RSVG\\'``) but unspecified on Linux filesystems.
- A split keeps the reference's order: objects in global-index order, each once, whatever the order or
  repetitions in the split file. An index past the last object is an error naming the split file.
- Boxes are taken as written (no +1), as the reference does; x2 < x1 or y2 < y1 follows
  ``inverted_box`` (`provg.data.base.order_box`). The reference lower-cases the description before
  tokenizing; this reader keeps it as written (stripped).

Only the objects of the split are validated, but every XML file is parsed, since the global indices
count the objects of all of them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from .base import INVERTED_BOX_POLICIES, GroundingDataset, Record, check_option, order_box
from .io import read_lines

__all__ = ["DIORRSVG", "read_split_indices"]

_BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")


def read_split_indices(path: Path) -> list[int]:
    """The global object indices listed in a split file, one non-negative integer per line."""
    indices = []
    for number, line in enumerate(read_lines(path, "split file"), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            index = int(line)
        except ValueError:
            raise ValueError(f"{path}, line {number}: expected an object index, got {line!r}") from None
        if index < 0:
            raise ValueError(f"{path}, line {number}: negative object index {index}")
        indices.append(index)
    if not indices:
        raise ValueError(f"{path}: no object indices")
    return indices


def _parse_xml(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as error:
        raise ValueError(f"{path}: malformed XML ({error})") from error


class DIORRSVG(GroundingDataset):
    """DIOR-RSVG samples of one split: ``image``, ``text``, ``box`` and ids ``image_id`` (the image file's
    stem), ``sent_id`` (the global object index) and ``category`` (the object's ``<name>``).

    Args:
        root: folder holding ``Annotations/``, ``JPEGImages/`` and the split files.
        split: "train", "val" or "test".
        transform: applied to each sample dict.
        inverted_box: "sort" (default), "keep" or "error" (see `provg.data.base.order_box`).
    """

    name = "dior_rsvg"

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Callable[[dict], dict] | None = None,
        inverted_box: str = "sort",
    ) -> None:
        super().__init__(root, split, transform)
        check_option("inverted_box", inverted_box, INVERTED_BOX_POLICIES)
        self.inverted_box = inverted_box
        self.split_file = self.root / f"{split}.txt"
        wanted = set(read_split_indices(self.split_file))
        annotation_dir = self.root / "Annotations"
        if not annotation_dir.is_dir():
            raise FileNotFoundError(f"annotation folder not found: {annotation_dir}")
        xml_files = sorted(annotation_dir.glob("*.xml"), key=lambda p: p.name)
        if not xml_files:
            raise FileNotFoundError(f"no .xml files in {annotation_dir}")
        count = 0
        for xml_path in xml_files:
            root_element = _parse_xml(xml_path)
            for position, member in enumerate(root_element.findall("object")):
                if count in wanted:
                    self.entries.append(self._parse_object(xml_path, root_element, member, position, count))
                count += 1
        if max(wanted) >= count:
            raise ValueError(
                f"{self.split_file}: object index {max(wanted)} is out of range; the {len(xml_files)} "
                f"files in {annotation_dir} hold {count} objects (indices 0–{count - 1})"
            )

    def _parse_object(
        self, xml_path: Path, root_element: ET.Element, member: ET.Element, position: int, index: int
    ) -> Record:
        where = f"{xml_path}, object {position}"
        filename = (root_element.findtext("filename") or "").strip()
        if not filename:
            raise ValueError(f"{xml_path}: no <filename>")
        bndbox = member.find("bndbox")
        if bndbox is None:
            raise ValueError(f"{where}: no <bndbox>")
        values = []
        for tag in _BOX_TAGS:
            text = bndbox.findtext(tag)
            if text is None:
                raise ValueError(f"{where}: <bndbox> has no <{tag}>")
            try:
                values.append(float(text))
            except ValueError:
                raise ValueError(f"{where}: <{tag}> is not a number: {text!r}") from None
        x1, y1, x2, y2 = values
        description = (member.findtext("description") or "").strip()
        if not description:
            raise ValueError(f"{where}: no <description> (the expression)")
        return Record(
            image=self.root / "JPEGImages" / filename,
            text=description,
            box=order_box((x1, y1, x2, y2), self.inverted_box, where),
            ids={
                "image_id": Path(filename).stem,
                "sent_id": index,
                "category": (member.findtext("name") or "").strip(),
            },
        )

    def record(self, index: int) -> Record:
        return self.entries[index]
