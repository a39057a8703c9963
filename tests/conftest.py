"""Shared fixtures. Tests run on CPU; a small synthrs benchmark is generated once per session."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(2)
# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors; it must be chosen before
# any kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def synthrs_root(tmp_path_factory):
    from provg.data.synthrs import generate

    return generate(
        tmp_path_factory.mktemp("synthrs"), sizes={"train": 24, "val": 6, "test": 6}, seed=3, progress=False
    )


@pytest.fixture(scope="session")
def text_encoder():
    from provg.text import TextEncoder

    return TextEncoder(trainable=False)
