"""TTT-Linear (Sun et al. 2024, arXiv:2407.04620): TTT layers whose inner model is linear. The code is
in ttt.py; this module names TTT-Linear's sizes."""

from altbench.models.base import swap_layer_op
from altbench.models.ttt import TTT, sizes, ttt_mini_batch_triton

SIZES = sizes("linear")
MODEL = TTT

BACKENDS = {"triton": swap_layer_op("mixer.mini_batch", ttt_mini_batch_triton)}
FORWARD_ONLY = ("triton",)  # the kernel has no backward: a train step under "first"/"fastest" runs on torch
