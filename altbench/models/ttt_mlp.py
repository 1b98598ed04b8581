"""TTT-MLP (Sun et al. 2024, arXiv:2407.04620): TTT layers whose inner model is a two-layer GELU MLP,
4x wide. The code is in ttt.py; this module names TTT-MLP's sizes."""

from altbench.models.ttt import TTT, sizes

SIZES = sizes("mlp")
MODEL = TTT
