"""Triton kernels of the PCM gates (CUDA tensors; CPU tensors under ``TRITON_INTERPRET=1``).

Imported lazily by the ``triton`` backend: importing provg never imports triton.
"""
