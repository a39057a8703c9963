"""The synthrs reader: the RRSIS-D reader plus each sample's gold `Decomposition`."""

from __future__ import annotations

import json
from typing import Any

from provg.parsers import Decomposition

from ..rrsisd import RRSISD

__all__ = ["SynthRS"]


class SynthRS(RRSISD):
    """synthrs samples (see `RRSISD`), each with ``decomposition``: its gold cues."""

    def __init__(self, root, split: str, **options) -> None:
        super().__init__(root, split, **options)
        gold_path = self.root / "rrsisd" / "synthrs_gold.json"
        if not gold_path.exists():
            raise FileNotFoundError(
                f"{gold_path} not found: {self.root} is not a synthrs benchmark; "
                "create one with provg.data.synthrs.generate(root)"
            )
        self.gold = {int(k): v for k, v in json.loads(gold_path.read_text()).items()}

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = super().__getitem__(index)
        sample["decomposition"] = Decomposition.from_marked(self.gold[sample["sent_id"]])
        return sample
