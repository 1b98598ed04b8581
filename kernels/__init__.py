"""Triton kernels, each beside a plain-PyTorch reference of the same op.

Installed as `altbench.kernels` (never as a top-level `kernels` module, which belongs to
Hugging Face's `kernels` package).
"""
