"""Registers, spills and shared memory of each CUDA kernel in csrc/cuda, from ptxas, without a GPU.

A kernel's registers per thread decide how many of its blocks an SM holds at once, and spills put values in
local memory; both show in device time, which only a GPU can measure. ptxas reports them at compile time, so
this script compiles each ``csrc/cuda/*.cu`` for one architecture with the extension's own flags (those of
`torch.utils.cpp_extension` and setup.py) and ``-Xptxas -v``, and prints one row per kernel instantiation:
registers, bytes of spill stores and loads, static shared memory, and how many 128-thread blocks the registers
allow per SM (65,536 registers per SM on sm_80 and sm_90; shared memory and the kernel's own launch
configuration may allow fewer).

    python benchmarks/cuda_resources.py                 # sm_90, every file (a minute on 2 cores)
    python benchmarks/cuda_resources.py --arch 80 --files survey_gate_cuda.cu

Needs nvcc (CUDA_HOME, else /usr/local/cuda) and c++filt; runs two compilations at a time.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "csrc" / "cuda"
REGISTERS_PER_SM = 65536
ENTRY = re.compile(r"Compiling entry function '(\w+)' for 'sm_(\d+)'")
SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USAGE = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def nvcc_path() -> Path:
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    nvcc = Path(home) / "bin" / "nvcc"
    if not nvcc.exists():
        raise SystemExit(f"no nvcc at {nvcc}: set CUDA_HOME to the CUDA toolkit's root")
    return nvcc


def compile_command(nvcc: Path, source: Path, arch: int, output: Path) -> list[str]:
    """nvcc for one source as setup.py builds it (torch's extension flags, -O3, C++20), to a cubin of one
    architecture, with ptxas's resource report."""
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    includes += [f"-I{nvcc.parent.parent / 'include'}", f"-I{sysconfig.get_paths()['include']}"]
    return [
        str(nvcc),
        "-DPROVG_WITH_CUDA",
        "-DTORCH_API_INCLUDE_EXTENSION_H",
        "-DTORCH_EXTENSION_NAME=_C",
        *includes,
        *cpp_extension.COMMON_NVCC_FLAGS,
        "-O3",
        "-std=c++20",
        f"-gencode=arch=compute_{arch},code=sm_{arch}",
        "-cubin",
        "-Xptxas",
        "-v",
        "-o",
        str(output),
        str(source),
    ]


def demangle(names: list[str]) -> list[str]:
    if not names:
        return []
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def short_name(demangled: str) -> tuple[str, str]:
    """(kernel, template arguments) from a demangled name, namespaces, return type and parameters dropped."""
    name = re.sub(r"\(anonymous namespace\)::|provg::|cuda::|c10::", "", demangled)
    name = name.removeprefix("void ").split("(", 1)[0]
    kernel, _, arguments = name.partition("<")
    return kernel, arguments.removesuffix(">").replace(" ", "")


def parse_ptxas(stderr: str, file: str) -> list[dict]:
    """One row per kernel in ptxas's verbose report (mangled name, registers, spill bytes, static smem)."""
    rows: list[dict] = []
    for line in stderr.splitlines():
        if match := ENTRY.search(line):
            rows.append({"file": file, "mangled": match.group(1), "spill_st": 0, "spill_ld": 0, "smem": 0})
        elif rows and (match := SPILLS.search(line)):
            rows[-1]["spill_st"], rows[-1]["spill_ld"] = int(match.group(2)), int(match.group(3))
        elif rows and (match := USAGE.search(line)):
            rows[-1]["registers"] = int(match.group(1))
            rows[-1]["smem"] = int(match.group(2) or 0)
    return rows


def report(nvcc: Path, source: Path, arch: int) -> list[dict]:
    """ptxas's figures for every kernel compiled from ``source``, with readable names."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            compile_command(nvcc, source, arch, Path(tmp) / "out.cubin"),
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
    if done.returncode != 0:
        raise SystemExit(f"nvcc failed on {source.name}:\n{done.stderr[-4000:]}")
    rows = parse_ptxas(done.stderr, source.name)
    for row, name in zip(rows, demangle([r["mangled"] for r in rows]), strict=True):
        row["kernel"], row["arguments"] = short_name(name)
    return rows


def blocks_by_registers(registers: int, threads: int = 128) -> int:
    """Resident blocks of ``threads`` threads per SM that the registers allow (allocated per warp in units of
    256), at most 64 warps per SM."""
    warps = threads // 32
    per_warp = -(-registers * 32 // 256) * 256
    return min(REGISTERS_PER_SM // (per_warp * warps), 64 // warps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arch", type=int, default=90, help="compute capability without the dot (default 90)"
    )
    parser.add_argument("--files", nargs="+", default=None, help="file names under csrc/cuda (default: all)")
    args = parser.parse_args()
    if shutil.which("c++filt") is None:
        raise SystemExit("c++filt (binutils) is needed to name the kernels")
    nvcc = nvcc_path()
    sources = [SOURCES / f for f in args.files] if args.files else sorted(SOURCES.glob("*.cu"))
    missing = [s.name for s in sources if not s.exists()]
    if missing:
        raise SystemExit(f"not in csrc/cuda: {', '.join(missing)}")
    version = (
        subprocess.run([str(nvcc), "--version"], capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    python = sys.version.split()[0]
    print(f"# {datetime.date.today()}  sm_{args.arch}  {version}  torch {torch.__version__}  python {python}")
    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = list(pool.map(lambda s: report(nvcc, s, args.arch), sources))
    header = [
        "file",
        "kernel",
        "template arguments",
        "registers",
        "spill stores B",
        "spill loads B",
        "smem B",
        "blocks/SM (128 thr, regs)",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for rows in reports:
        for r in sorted(rows, key=lambda r: (r["kernel"], r["arguments"])):
            cells = [
                r["file"],
                r["kernel"],
                r["arguments"],
                r["registers"],
                r["spill_st"],
                r["spill_ld"],
                r["smem"],
                blocks_by_registers(r["registers"]),
            ]
            print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
