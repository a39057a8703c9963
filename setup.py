"""Build and install provg, with its C++/CUDA operators compiled into ``provg._C``.

Install after the pinned requirements, without build isolation (setup.py imports torch)::

    pip install --no-build-isolation -e .

The source folder ``parsers/`` installs as ``provg.parsers`` (never as a top-level ``parsers``).
Environment switches, read at build time:

- ``FORCE_CUDA=1``: compile ``csrc/cuda/*.cu`` even when no GPU is visible (needs ``CUDA_HOME``).
- ``FORCE_ONLY_CPU=1``: never compile CUDA sources.
- ``PROVG_NO_EXTENSION=1``: build no extension at all (provg then runs on its PyTorch references).
- ``MAX_JOBS``, ``TORCH_CUDA_ARCH_LIST``: honoured by torch's extension builder.
- ``PROVG_CPU_VECTOR=default``: build the CPU kernels without AVX2 (used when the build machine has it).

Without either force switch, CUDA sources are compiled when a GPU is visible and ``CUDA_HOME`` is set.
"""

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _cpu_vector_flags() -> list[str]:
    """The widest of AVX-512 / AVX2 (+ FMA) this machine has, for ATen's Vectorized<> in csrc/cpu.

    The extension is built where it runs (pip install from source); PROVG_CPU_VECTOR=default builds
    portable code instead, =avx2 caps the width at AVX2.
    """
    choice = os.environ.get("PROVG_CPU_VECTOR", "auto")
    if choice == "default":
        return []
    try:
        with open("/proc/cpuinfo") as handle:
            flags = set(handle.read().split())
    except OSError:
        return []
    avx512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"}
    if choice != "avx2" and avx512 <= flags:
        return [
            "-mavx512f",
            "-mavx512bw",
            "-mavx512vl",
            "-mavx512dq",
            "-mfma",
            "-DCPU_CAPABILITY_AVX512",
            "-DCPU_CAPABILITY=AVX512",
        ]
    if {"avx2", "fma"} <= flags:
        return ["-mavx2", "-mfma", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]
    return []


def _extensions() -> tuple[list, dict]:
    if _flag("PROVG_NO_EXTENSION"):
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    with_cuda = not _flag("FORCE_ONLY_CPU") and (
        _flag("FORCE_CUDA") or (torch.cuda.is_available() and CUDA_HOME is not None)
    )
    sources = [
        "csrc/ops.cpp",
        "csrc/gate_autograd.cpp",
        "csrc/rep_bn_add_silu_autograd.cpp",
        "csrc/python_module.cpp",
        *sorted(glob.glob("csrc/cpu/*.cpp")),
    ]
    # -fno-math-errno: std::sqrt and friends as instructions, vectorized in `omp simd` loops (nothing here
    # reads errno).
    cxx_flags = ["-O3", "-fopenmp", "-fno-math-errno", *_cpu_vector_flags()]
    extra_compile_args: dict[str, list[str]] = {"cxx": cxx_flags}
    define_macros: list[tuple[str, str | None]] = []
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        define_macros.append(("PROVG_WITH_CUDA", None))
        extra_compile_args["nvcc"] = ["-O3"]
    builder = CUDAExtension if with_cuda else CppExtension
    extension = builder(
        "provg._C",
        sources,
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )
    return [extension], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extensions()

setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
