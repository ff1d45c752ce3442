"""The hash encoding against a plain per-point evaluation of Instant-NGP's definition (tinycudann's conventions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backend.engine.geometry.hashgrid import HashGridConfig, TorchHashGrid, make_hash_grid

# 4 levels, table 2^10: level 0 (4^3 = 64 vertices) is dense, levels 1-3 (11^3, 26^3, 64^3) are hashed.
SMALL = HashGridConfig(
    n_levels=4, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4, finest_resolution=64
)


def reference_encoding(
    cfg: HashGridConfig, table: np.ndarray, points: np.ndarray, grad_out: np.ndarray | None = None
):
    """Loop-by-loop evaluation. Returns features [N, L F] and, given grad_out [N, L F], d(sum grad_out * f)/d table.

    Conventions of tinycudann's grid encoding: scale_l = N_min b^l - 1 with b = (N_max / N_min)^(1 / (L - 1)),
    ceil(scale_l) + 1 vertices per axis, position scale_l x + 0.5, a level is dense when its vertices fit in
    the table (size rounded up to a multiple of 8), else hashed with primes (1, 2654435761, 805459861) XOR.
    """
    n_feat, max_size = cfg.n_features_per_level, 2**cfg.log2_hashmap_size
    b = (cfg.finest_resolution / cfg.base_resolution) ** (1.0 / (cfg.n_levels - 1))
    out = np.zeros((len(points), cfg.n_levels * n_feat))
    grad = np.zeros_like(table, dtype=np.float64)
    offset = 0
    for level in range(cfg.n_levels):
        scale = float(np.float32(cfg.base_resolution * b**level - 1.0))
        res = math.ceil(scale) + 1
        size = min(int(math.ceil(res**3 / 8) * 8), max_size)
        hashed = res**3 > size
        for n, p in enumerate(points):
            pos = [float(np.float32(v) * np.float32(scale) + np.float32(0.5)) for v in p]
            base = [math.floor(v) for v in pos]
            frac = [v - c for v, c in zip(pos, base, strict=True)]
            for corner in range(8):
                bits = [(corner >> axis) & 1 for axis in range(3)]
                c = [base[axis] + bits[axis] for axis in range(3)]
                weight = 1.0
                for axis in range(3):
                    weight *= frac[axis] if bits[axis] else 1.0 - frac[axis]
                if hashed:
                    index = ((c[0] * 1) ^ (c[1] * 2654435761) ^ (c[2] * 805459861)) % 2**32 % size
                else:
                    index = (c[0] + c[1] * res + c[2] * res * res) % size
                row = offset + index
                out[n, level * n_feat : (level + 1) * n_feat] += weight * table[row]
                if grad_out is not None:
                    grad[row] += weight * grad_out[n, level * n_feat : (level + 1) * n_feat]
        offset += size
    assert offset == len(table), "table size differs from tinycudann's layout"
    return out, grad


def _grid_with_random_table(cfg: HashGridConfig, seed: int = 0) -> TorchHashGrid:
    torch.manual_seed(seed)
    grid = TorchHashGrid(cfg)
    with torch.no_grad():  # larger values than the 1e-4 init so that differences show
        grid.table.uniform_(-1.0, 1.0)
    return grid


@pytest.mark.parametrize("cfg", [SMALL, HashGridConfig()], ids=["small", "default"])
def test_torch_hash_grid_matches_reference(cfg: HashGridConfig) -> None:
    grid = _grid_with_random_table(cfg)
    rng = np.random.default_rng(0)
    points = rng.random((40 if cfg is SMALL else 12, 3)).astype(np.float32)
    points[0] = [0.0, 0.0, 0.0]
    points[1] = [1.0, 1.0, 1.0]  # the far corner wraps around in dense levels, as in tinycudann
    table = grid.table.detach().double().numpy()
    expected, _ = reference_encoding(cfg, table, points)
    got = grid(torch.from_numpy(points)).detach().double().numpy()
    assert got.shape == (len(points), cfg.n_levels * cfg.n_features_per_level)
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_small_config_has_dense_and_hashed_levels() -> None:
    grid = TorchHashGrid(SMALL)
    hashed = [level[4] for level in grid.layout]
    assert hashed == [False, True, True, True]
    default = TorchHashGrid(HashGridConfig())
    assert [level[4] for level in default.layout][4:6] == [False, True]
    assert default.layout[-1][1] == 2048  # finest level: 2048 vertices per axis


def test_gradient_reaches_table_like_reference() -> None:
    grid = _grid_with_random_table(SMALL, seed=1)
    rng = np.random.default_rng(1)
    points = rng.random((30, 3)).astype(np.float32)
    grad_out = rng.standard_normal((30, SMALL.n_levels * SMALL.n_features_per_level)).astype(np.float32)
    out = grid(torch.from_numpy(points))
    (out * torch.from_numpy(grad_out)).sum().backward()
    _, expected = reference_encoding(SMALL, grid.table.detach().double().numpy(), points, grad_out)
    assert grid.table.grad is not None
    np.testing.assert_allclose(grid.table.grad.double().numpy(), expected, atol=1e-5)
    assert np.abs(expected).sum() > 1.0


def test_initial_table_is_small_and_seeded() -> None:
    torch.manual_seed(3)
    a = TorchHashGrid(SMALL)
    torch.manual_seed(3)
    b = TorchHashGrid(SMALL)
    assert torch.equal(a.table, b.table)
    assert a.table.abs().max() <= 1e-4
    assert isinstance(make_hash_grid(SMALL, "cpu"), TorchHashGrid)


@pytest.mark.gpu
def test_torch_hash_grid_cuda_matches_cpu() -> None:
    cpu = _grid_with_random_table(SMALL, seed=2)
    cuda = TorchHashGrid(SMALL).cuda()
    with torch.no_grad():
        cuda.table.copy_(cpu.table)
    x = torch.rand(5000, 3, generator=torch.Generator().manual_seed(0))
    g = torch.randn(5000, SMALL.n_output_dims, generator=torch.Generator().manual_seed(1))
    out_cpu, out_cuda = cpu(x), cuda(x.cuda())
    torch.testing.assert_close(out_cuda.cpu(), out_cpu, atol=1e-5, rtol=1e-5)
    (out_cpu * g).sum().backward()
    (out_cuda * g.cuda()).sum().backward()
    torch.testing.assert_close(cuda.table.grad.cpu(), cpu.table.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", [SMALL, HashGridConfig()], ids=["small", "default"])
def test_tcnn_and_torch_hash_grids_agree(cfg: HashGridConfig) -> None:
    pytest.importorskip("tinycudann")
    from backend.engine.geometry.hashgrid import TcnnHashGrid

    torch_grid = _grid_with_random_table(cfg, seed=4).cuda()
    tcnn_grid = TcnnHashGrid(cfg).cuda()
    # tinycudann keeps one flat vector; viewed as [entries, F] it is TorchHashGrid.table's layout.
    assert tcnn_grid.encoding.params.numel() == torch_grid.table.numel()
    with torch.no_grad():
        tcnn_grid.encoding.params.copy_(torch_grid.table.reshape(-1))
    x = torch.rand(4096, 3, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    torch.testing.assert_close(tcnn_grid(x), torch_grid(x), atol=1e-4, rtol=1e-4)
    g = torch.randn(4096, cfg.n_output_dims, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    (tcnn_grid(x) * g).sum().backward()
    (torch_grid(x) * g).sum().backward()
    torch.testing.assert_close(
        tcnn_grid.encoding.params.grad.view_as(torch_grid.table), torch_grid.table.grad, atol=1e-3, rtol=1e-3
    )
