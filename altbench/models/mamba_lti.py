"""Mamba with its selection mechanism removed: an LTI ablation (Gu & Dao 2023, arXiv:2312.00752).

The block, the scan and the sizes are Mamba's (models/mamba.py); only Delta, B and C change from
functions of the input to learned constants (`MambaConfig.selective = False`), so

    h_t = exp(Delta A) * h_{t-1} + Delta B x_t,    y_t = C . h_t + D x_t

is time-invariant, like the S4-style layers that the paper's selective-copying experiment
(Table 1) shows failing where the selective S6 layer succeeds. Used by the `probes` suite.
"""

import dataclasses

from altbench.models import mamba

SIZES = {name: dataclasses.replace(config, selective=False) for name, config in mamba.SIZES.items()}
MODEL = mamba.Mamba
