"""Synthetic recall and copying probes, generated on the fly from a seed (torch only, no downloads).

Every task returns one batch as three (B, T) tensors:

    inputs     int64   the tokens the model reads
    targets    int64   the token to predict at each position (0 where nothing is asked)
    loss_mask  bool    True where a prediction is scored, by the loss and by accuracy

The same (vocab, seq_len, batch, seed, axis values) always gives the same batch, so a training
stream and a held-out test set are just two disjoint ranges of seeds (see `probes/trainer.py`).

Tasks:
  mqar               multi-query associative recall (Arora et al. 2023, "Zoology", arXiv:2312.04927)
  copying            copy tokens across a fixed gap (the "Copying" task of Gu & Dao 2023, Table 1)
  selective_copying  copy tokens scattered among noise, in order (Gu & Dao 2023, sec. 3.1, Table 1)
  induction_heads    recall the token that followed a trigger (Gu & Dao 2023, sec. 4.1.2)
  sudoku             fill in a 4x4 or 9x9 Sudoku, grid to grid (the HRM paper's probe, Wang et al. 2025,
                     arXiv:2506.21734, sec. 3); scored per cell and per whole puzzle
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import math

import torch

from altbench.errors import UserError

BLANK = 0  # copying tasks: the noise / blank token between the tokens to copy
SEP = 1  # copying tasks: "now reproduce them"; induction heads: the trigger token
FIRST_CONTENT = 2  # copying and induction tasks draw content tokens from [2, vocab)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _distinct(batch: int, low: int, high: int, k: int, g: torch.Generator) -> torch.Tensor:
    """k distinct integers from [low, high) per row, in random order: (batch, k). They are the
    positions of the k smallest of (high - low) uniform draws; topk finds them in O(n), where a
    full argsort took most of an MQAR training step's time (26 ms against 3 for 64 x 4095)."""
    return torch.rand(batch, high - low, generator=g).topk(k, dim=1, largest=False).indices + low


def mqar(vocab: int, seq_len: int, batch: int, seed: int, num_kv_pairs: int = 4, power_a: float = 0.01):
    """Multi-query associative recall (Zoology, sec. 3 and app. E).

    The sequence opens with `num_kv_pairs` pairs  k_1 v_1 k_2 v_2 ...  (keys from [1, vocab/2),
    values from [vocab/2, vocab): disjoint halves, every key distinct). The rest is random tokens
    in which every key appears once more as a query, at one of the (seq_len - 2D) / 2 even slots;
    the model must answer its value at the query. Slot s (1-based) is drawn with probability
    proportional to s^(power_a - 1), so short gaps dominate, as repeated bigrams do in text.

        inputs   k1 v1 k2 v2 .. x  x  k2 x  x  x  k1 x     (x: random tokens)
        targets   .  .  .  . .. .  .  v2 .  .  .  v1 .
    """
    D = num_kv_pairs
    key_end = vocab // 2
    slots = (seq_len - 2 * D) // 2
    if D > key_end - 1 or D > slots:
        raise UserError(f"mqar: {D} pairs need vocab > {2 * D + 1} and seq_len >= {4 * D} (got {vocab}, {seq_len})")
    g = _generator(seed)
    keys = _distinct(batch, 1, key_end, D, g)  # (B, D)
    values = _distinct(batch, key_end, vocab, D, g)  # (B, D)
    inputs = torch.randint(0, vocab, (batch, seq_len), generator=g)  # (B, T) the random filler
    inputs[:, 0 : 2 * D : 2], inputs[:, 1 : 2 * D : 2] = keys, values
    s = torch.arange(1, slots + 1, dtype=torch.float64)
    p = (power_a * s ** (power_a - 1)).expand(batch, slots)
    query_pos = 2 * D + 2 * torch.multinomial(p, D, replacement=False, generator=g)  # (B, D)
    inputs.scatter_(1, query_pos, keys)
    targets = torch.zeros_like(inputs).scatter_(1, query_pos, values)
    loss_mask = torch.zeros_like(inputs, dtype=torch.bool).scatter_(1, query_pos, True)
    return inputs, targets, loss_mask


def _copy_batch(vocab: int, seq_len: int, batch: int, seed: int, num_tokens: int, scattered: bool):
    """Context of seq_len - M tokens holding the M data tokens, then SEP, then the M tokens again.

    The full sequence has seq_len + 1 tokens; inputs / targets are it without its last / first token,
    and only the M reproduced tokens are scored.
    """
    M, C = num_tokens, seq_len - num_tokens
    if C < M or vocab <= FIRST_CONTENT:
        raise UserError(
            f"copying: {M} tokens need seq_len >= {2 * M} and vocab > {FIRST_CONTENT} (got {seq_len}, {vocab})"
        )
    g = _generator(seed)
    data = torch.randint(FIRST_CONTENT, vocab, (batch, M), generator=g)  # (B, M)
    if scattered:
        positions = _distinct(batch, 0, C, M, g).sort(dim=1).values  # (B, M) ordered
    else:
        positions = torch.arange(M).expand(batch, M)
    context = torch.full((batch, C), BLANK, dtype=torch.long).scatter_(1, positions, data)  # (B, C)
    full = torch.cat([context, torch.full((batch, 1), SEP), data], dim=1)  # (B, T + 1)
    loss_mask = torch.zeros(batch, seq_len, dtype=torch.bool)
    loss_mask[:, C:] = True
    return full[:, :-1], full[:, 1:], loss_mask


def copying(vocab: int, seq_len: int, batch: int, seed: int, num_tokens: int = 8):
    """Copy M random tokens across a fixed gap: the tokens open the context, blanks fill the rest.

        inputs   a b c _ _ _ _ _ | a b     (_: BLANK, |: SEP)
        targets                    a b c
    Solvable by time-invariant models (a fixed-lag convolution suffices).
    """
    return _copy_batch(vocab, seq_len, batch, seed, num_tokens, scattered=False)


def selective_copying(vocab: int, seq_len: int, batch: int, seed: int, num_tokens: int = 8):
    """Copy M random tokens scattered at random positions among blanks, in their order.

        inputs   _ a _ _ b _ c _ | a b
        targets                    a b c
    The spacing varies per example, so the model must select tokens by content (Mamba, sec. 3.1).
    """
    return _copy_batch(vocab, seq_len, batch, seed, num_tokens, scattered=True)


def induction_heads(vocab: int, seq_len: int, batch: int, seed: int):
    """Random content tokens with the trigger SEP once inside, followed by a target token; the
    sequence ends with SEP again and the model must predict that target (only the last position
    is scored).

        inputs   x x x | t x x x x |
        targets                    t
    """
    if seq_len < 4 or vocab <= FIRST_CONTENT:
        raise UserError(f"induction_heads: needs seq_len >= 4 and vocab > {FIRST_CONTENT} (got {seq_len}, {vocab})")
    g = _generator(seed)
    full = torch.randint(FIRST_CONTENT, vocab, (batch, seq_len + 1), generator=g)  # (B, T + 1)
    trigger = torch.randint(0, seq_len - 2, (batch, 1), generator=g)  # trigger and target before the end
    full.scatter_(1, trigger, SEP)
    full[:, seq_len - 1] = SEP
    full[:, seq_len] = full.gather(1, trigger + 1)[:, 0]
    loss_mask = torch.zeros(batch, seq_len, dtype=torch.bool)
    loss_mask[:, -1] = True
    return full[:, :-1], full[:, 1:], loss_mask


SUDOKU_EMPTY = 0  # sudoku: a blank cell; digits are the tokens 1..n


def sudoku_peers(n: int) -> torch.Tensor:
    """(n^2, 3n - 2b - 1) the cells sharing a row, column or box with each cell (b = sqrt n), itself excluded."""
    b = math.isqrt(n)
    r, c = torch.arange(n * n) // n, torch.arange(n * n) % n
    box = (r // b) * b + c // b
    same = (r[:, None] == r) | (c[:, None] == c) | (box[:, None] == box)
    same.fill_diagonal_(False)
    return same.nonzero()[:, 1].view(n * n, -1)


def sudoku_solutions(n: int, batch: int, g: torch.Generator) -> torch.Tensor:
    """(batch, n^2) valid n x n grids, digits 1..n, row by row.

    The base grid s[r][c] = (b (r mod b) + r div b + c) mod n (b = sqrt n) under random symmetries
    that keep a grid valid: a permutation of the digits, of the rows within each band of b rows, of
    the bands, the same two for columns, and a transpose (for 4x4 they reach 192 of the 288 grids).
    """
    b = math.isqrt(n)
    r, c = torch.arange(n)[:, None], torch.arange(n)[None, :]
    base = (b * (r % b) + r // b + c) % n  # (n, n) digits 0..n-1

    def lines() -> torch.Tensor:  # (batch, n): a row (or column) order: bands permuted, lines within each band permuted
        bands = torch.rand(batch, b, generator=g).argsort(1)  # (B, b)
        within = torch.rand(batch, b, b, generator=g).argsort(2)  # (B, b, b)
        return (bands[:, :, None] * b + within).flatten(1)

    rows, cols = lines(), lines()
    grid = base[rows[:, :, None], cols[:, None, :]]  # (B, n, n)
    flip = torch.rand(batch, generator=g) < 0.5
    grid = torch.where(flip[:, None, None], grid.transpose(1, 2), grid)
    digits = torch.rand(batch, n, generator=g).argsort(1)  # (B, n) a permutation of 0..n-1
    return digits.gather(1, grid.flatten(1)) + 1


def sudoku(vocab: int, seq_len: int, batch: int, seed: int, blanks: int = 8):
    """Fill in an n x n Sudoku (seq_len = n^2 cells read row by row: 16 for 4x4, 81 for 9x9; boxes of
    sqrt(n) x sqrt(n)). inputs: the puzzle, SUDOKU_EMPTY at a blank and digits 1..n elsewhere;
    targets: the solution (`sudoku_solutions`); loss_mask: the blank cells.

    Up to `blanks` cells are blanked, one at a time in a random order, each only if it is a naked
    single when blanked (the givens among its peers hold the other n - 1 digits). Filling the blanks
    in reverse order is then forced cell by cell, so every puzzle has exactly one solution, the one in
    targets. A puzzle has fewer blanks when no further cell qualifies (asked for all cells, 4x4 puzzles
    get 9.1 blanks on average, 4 to 12; 9x9 ones 38, 25 to 46).

        inputs   1 0 | 0 4 ...      targets  1 3 | 2 4 ...     (0: blank)
    """
    n = math.isqrt(seq_len)
    b = math.isqrt(n)
    if n * n != seq_len or b * b != n or b < 2:
        raise UserError(f"sudoku: seq_len is the number of cells, 16 (4x4) or 81 (9x9), got {seq_len}")
    if vocab <= n or not 1 <= blanks <= seq_len:
        raise UserError(f"sudoku: needs vocab > {n} and 1 <= blanks <= {seq_len} (got vocab {vocab}, blanks {blanks})")
    g = _generator(seed)
    solution = sudoku_solutions(n, batch, g)  # (B, n^2)
    puzzle = solution.clone()
    peers = sudoku_peers(n)  # (n^2, P)
    order = torch.rand(batch, seq_len, generator=g).argsort(1)  # (B, n^2) the order cells are tried in
    count = torch.zeros(batch, dtype=torch.long)
    for step in range(seq_len):
        cell = order[:, step : step + 1]  # (B, 1)
        seen = torch.zeros(batch, n + 1, dtype=torch.bool).scatter_(1, puzzle.gather(1, peers[cell[:, 0]]), True)
        single = seen[:, 1:].sum(1) == n - 1
        blank = single & (count < blanks)
        puzzle.scatter_(1, cell, torch.where(blank[:, None], SUDOKU_EMPTY, puzzle.gather(1, cell)))
        count += blank.long()
    return puzzle, solution, puzzle == SUDOKU_EMPTY


@dataclass(frozen=True)
class ProbeTask:
    make: Callable  # (vocab, seq_len, batch, seed, **axes) -> (inputs, targets, loss_mask)
    axes: dict  # axis name -> default value (seq_len first)
    vocab: int  # default vocabulary
    answers: Callable[[int, dict], int]  # (vocab, point) -> how many tokens an answer can be (chance = 1 / answers)
    exact: bool = False  # also scored per sequence: every scored position right ("exact_accuracy")
    bidirectional: bool = False  # each answer depends on the whole input: models read it without a causal mask
    shifted: bool = False  # targets are the inputs one position on: a model that reads later positions sees the answers


# Defaults follow the papers: Zoology's MQAR sweep starts at (64, 4) with vocab 8192; Mamba's
# copying tasks and induction heads use a vocabulary of 16 (here 16 content tokens + 2 specials).
TASKS: dict[str, ProbeTask] = {
    "mqar": ProbeTask(mqar, {"seq_len": 64, "num_kv_pairs": 4}, 8192, lambda v, p: v - v // 2),
    "copying": ProbeTask(copying, {"seq_len": 64, "num_tokens": 16}, 18, lambda v, p: v - FIRST_CONTENT, shifted=True),
    "selective_copying": ProbeTask(
        selective_copying, {"seq_len": 256, "num_tokens": 16}, 18, lambda v, p: v - FIRST_CONTENT, shifted=True
    ),
    "induction_heads": ProbeTask(induction_heads, {"seq_len": 256}, 18, lambda v, p: v - FIRST_CONTENT, shifted=True),
    # 4x4 by default, the size a tiny model learns on a CPU; vocab 10 holds 9x9's digits too
    "sudoku": ProbeTask(sudoku, {"seq_len": 16, "blanks": 8}, 10, lambda v, p: math.isqrt(p["seq_len"]),
                        exact=True, bidirectional=True),
}
