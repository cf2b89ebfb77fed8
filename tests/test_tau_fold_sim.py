"""`scripts/tau_fold_sim.py`: the tile-maxima start is a certified lower bound on tau, and the loop from it runs."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "tau_fold_sim.py"


def _sim():
    spec = importlib.util.spec_from_file_location("tau_fold_sim", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _exact_tau(z, p):
    lo, hi = np.full(len(z), -1.0), np.zeros(len(z))
    for _ in range(200):
        mid = (lo + hi) / 2
        big = np.where(np.isfinite(z), np.maximum(z - mid[:, None], 0.0) ** p, 0.0).sum(1) > 1
        lo, hi = np.where(big, mid, lo), np.where(big, hi, mid)
    return lo


@pytest.mark.parametrize("alpha", [1.25, 4 / 3, 1.5, 2.0])
@pytest.mark.parametrize("k", [1, 4, 8])
def test_tile_max_start_is_a_certified_bound(alpha, k):
    rng = np.random.default_rng(0)
    z = (alpha - 1) * 2.0 * rng.standard_normal((64, 200))  # z units; 200 keys: the last tile is partial
    z[:, 150:] = np.where(rng.random((64, 50)) < 0.5, -np.inf, z[:, 150:])  # hidden keys
    z -= z.max(1, keepdims=True)  # offsets from the row max, as the kernels carry them
    p = 1 / (alpha - 1)
    start, tau = _sim().tile_max_start(z, p, k), _exact_tau(z, p)
    assert (start >= -1.0 - 1e-12).all() and (start <= tau + 1e-9).all()
    if k == 1:
        np.testing.assert_allclose(start, -1.0, atol=1e-9)  # the top entry alone: m - 1


def test_tile_max_start_is_exact_when_each_tile_holds_one_supported_entry():
    z = np.full((1, 256), -50.0)
    z[0, [3, 70, 140]] = [0.0, -0.2, -0.3]  # three entries in three tiles
    p = 2.0  # alpha = 1.5
    np.testing.assert_allclose(_sim().tile_max_start(z, p, 4), _exact_tau(z, p), atol=1e-12)


@pytest.mark.parametrize("pos", [0.0, 2.0])
def test_loop_from_the_tile_maxima_start_runs(pos):
    res = _sim().simulate(4 / 3, 16.0, n=256, temp=2.0, tile_max_k=8, pos=pos)
    assert 1 <= res["passes_fold"] <= 2 and res["err_fold"] < 1e-3 and 0 < res["tiles_listed"] <= 1


def test_closed_form_step_is_exact_where_it_says_so():
    # alpha = 1.5: a step certified exact lands on the exact tau; from m - 1 on rows with a clear top, most rows are
    # certified at once; the loop with the certificate never needs more passes than the Halley loop alone
    sim = _sim()
    rng = np.random.default_rng(1)
    z = 0.5 * rng.standard_normal((128, 256))
    z[:64, :3] += 3.0  # rows whose support is three keys well above the rest
    z -= z.max(1, keepdims=True)
    tau = _exact_tau(z, 2.0)
    t0 = np.full(len(z), -1.0)
    dc, exact = sim.closed_form_step(z, t0)
    assert exact[:64].mean() > 0.5 and exact.any()
    np.testing.assert_allclose((t0 + dc)[exact], tau[exact], atol=1e-12)
    passes, t = sim.closed_form_passes(z, t0, 2.0**-6)
    np.testing.assert_allclose(t, tau, atol=2e-3)
    res = sim.simulate(1.5, 16.0, n=256, pos=2.0)
    assert res["passes_closed"] <= res["passes_loop"]
