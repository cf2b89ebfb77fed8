"""`scripts/tile_list_sim.py`: tile counts of the kernels' block-min list against a per-row test, on a built case."""

import importlib.util
import math
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "tile_list_sim.py"
spec = importlib.util.spec_from_file_location("tile_list_sim", SCRIPT)
sim = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sim)


def test_block_min_threshold_keeps_a_tile_no_row_needs():
    # alpha = 1.5 (p = x^2), scores already times alpha - 1. Every row has a top score 2 on its diagonal (one-hot:
    # tau = m - 1); rows 193..255 also score 2 on the key before (tau = m - 1/sqrt 2) and 1.2 on key 0. Key 0's tile
    # then holds no weight for any row, but its gap (1.2 - 2 = -0.8) beats the block's lowest offset (-1): listed.
    n = 256
    z = torch.zeros(n, n, dtype=torch.float64)
    idx = torch.arange(n)
    z[idx, idx] = 2.0
    rows = torch.arange(193, n)
    z[rows, rows - 1] = 2.0
    z[rows, 0] = 1.2
    z = z.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), -math.inf)
    offs = sim.newton_offsets(z, 1.5, 30)
    two_max = torch.full((len(rows),), -(0.5**0.5), dtype=torch.float64)
    assert torch.allclose(offs[-1][rows], two_max) and torch.equal(offs[-1][:193], torch.full((193,), -1.0).double())
    # each Newton point is a lower bound; the first already passes key 0's -0.8 (1.2 is in the sums at m - 1)
    assert (offs[1][rows] <= two_max).all() and (offs[1][rows] > -0.8).all()
    c = sim.list_counts(z, 1.5)
    # 128-row blocks: block 0 sees tiles 0-1 (both hold diagonals), block 1 tiles 0-3 (0 and 1 all-zero)
    assert c["visible_128"] == 6 and c["skip_exact_128"] == 2
    assert c["skip_list_final"] == 1  # key 0's tile stays listed
    assert c["skip_row_newton_1"] == c["skip_row_newton_2"] == 2
    # 64-row blocks: 1 + 2 + 3 + 4 visible; all-zero: 0 + 1 + 2 + 3
    assert c["visible_64"] == 10 and c["skip_exact_64"] == 6
