"""The benchmarks' round-robin timing (benchmarks/common.py): the order of calls it makes, settling calls
included, since what a call costs depends on the call before it (benchmarks/bench_call_order.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import common


def recorder(log: list[str], name: str):
    return lambda: log.append(name)


@pytest.fixture(autouse=True)
def default_timing():
    yield
    common.SETTLE = None


@pytest.mark.parametrize("settle", [0, 1, 3])
def test_each_timed_call_follows_settle_calls_of_the_same_function(settle):
    log: list[str] = []
    functions = {"a": recorder(log, "a"), "b": recorder(log, "b")}
    result = common.interleaved_ms(functions, torch.device("cpu"), warmup=2, repeat=4, settle=settle)
    assert log[:4] == ["a", "a", "b", "b"]  # warm-up
    rounds = log[4:]
    assert rounds == (["a"] * (settle + 1) + ["b"] * (settle + 1)) * 4
    assert set(result) == {"a", "b"} and all(len(r) == 3 for r in result.values())


def test_configure_timing_sets_the_default_and_labels_the_rows():
    log: list[str] = []
    common.configure_timing(2)
    common.interleaved_ms({"a": recorder(log, "a")}, torch.device("cpu"), warmup=0, repeat=3)
    assert len(log) == 3 * 3
    assert common.versions().endswith("timing settle 2")


def test_median_ms_times_a_single_function_without_settling_calls():
    log: list[str] = []
    common.configure_timing(4)
    common.median_ms(recorder(log, "f"), torch.device("cpu"), warmup=1, repeat=5)
    assert len(log) == 1 + 5


def test_configure_timing_rejects_a_negative_count():
    with pytest.raises(ValueError, match="settle must be 0 or more untimed calls, got -1"):
        common.configure_timing(-1)
