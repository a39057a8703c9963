"""benchmarks/cuda_resources.py: reading ptxas's report and the register-bound occupancy, on hand-worked
values (the nvcc run itself needs the CUDA toolkit: `make cuda-build`'s machine)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from cuda_resources import blocks_by_registers, parse_ptxas, short_name

# ptxas -v output for two kernels, as nvcc 13.0 prints it (names shortened).
PTXAS = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z6kernelIfLi64EEvv' for 'sm_90'
ptxas info    : Function properties for _Z6kernelIfLi64EEvv
    104 bytes stack frame, 136 bytes spill stores, 708 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 104 bytes cumulative stack size
ptxas info    : Compiling entry function '_Z4sumsIfEvv' for 'sm_90'
ptxas info    : Function properties for _Z4sumsIfEvv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 48 registers, used 1 barriers, 8192 bytes smem
"""


def test_parse_ptxas_reads_registers_spills_and_shared_memory():
    rows = parse_ptxas(PTXAS, "x.cu")
    assert [(r["mangled"], r["registers"], r["spill_st"], r["spill_ld"], r["smem"]) for r in rows] == [
        ("_Z6kernelIfLi64EEvv", 255, 136, 708, 0),
        ("_Z4sumsIfEvv", 48, 0, 0, 8192),
    ]


def test_short_name_drops_namespaces_return_type_and_parameters():
    name = (
        "void provg::(anonymous namespace)::survey_backward_kernel<c10::BFloat16, float, 32>"
        "(c10::BFloat16 const*, bool const*, long, int)"
    )
    assert short_name(name) == ("survey_backward_kernel", "BFloat16,float,32")
    assert short_name("void provg::cuda::column_sums_kernel<float, float, 4>(float const*)") == (
        "column_sums_kernel",
        "float,float,4",
    )


def test_blocks_by_registers_rounds_each_warp_up_to_256_registers():
    # 239 registers: 239·32 = 7648 → 7680 per warp, 30720 per 4-warp block: 65536 // 30720 = 2.
    assert blocks_by_registers(239) == 2
    assert blocks_by_registers(112) == 4  # 3584 per warp, 14336 per block: 4
    assert blocks_by_registers(170) == 2  # 5440 → 5632 per warp: 2 blocks (3 without the rounding)
    assert blocks_by_registers(255) == 2  # 8192 per warp
    assert blocks_by_registers(26) == 16  # 1024 per warp would allow 16, also the 64-warp limit
    assert blocks_by_registers(16, threads=256) == 8  # 512 per warp would allow 16; 64 warps allow 8
