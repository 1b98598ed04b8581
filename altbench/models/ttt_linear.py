"""TTT-Linear (Sun et al. 2024, arXiv:2407.04620): TTT layers whose inner model is linear. The code is
in ttt.py; this module names TTT-Linear's sizes."""

from altbench.models.ttt import TTT, sizes

SIZES = sizes("linear")
MODEL = TTT
