"""Multi-resolution hash encoding (Instant-NGP, Mueller et al. 2022, section 3).

Two implementations behind one interface, as in nerfstudio's encodings: `TcnnHashGrid` wraps tinycudann's
fused "HashGrid" encoding (CUDA only) and `TorchHashGrid` is plain PyTorch for the CPU and as a fallback.
The torch version follows tinycudann's conventions exactly (grid scale, +0.5 offset, per-level table sizes
and parameter layout), so a table copied from one into the other gives the same features to float tolerance.

Both map positions in [0, 1]^3 [N, 3] to features [N, n_levels * n_features_per_level], level-major.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from backend.engine.cancellation import checkpoint

# Coherent spatial hash of Instant-NGP eq. (4): h(x) = (XOR_i x_i * pi_i) mod T, with pi_1 = 1.
HASH_PRIMES = (1, 2654435761, 805459861)
INIT_SCALE = 1e-4  # table init U(-1e-4, 1e-4), Instant-NGP section 4


@dataclass(frozen=True)
class HashGridConfig:
    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    finest_resolution: int = 2048

    @property
    def per_level_scale(self) -> float:
        """Growth factor b between levels, Instant-NGP eq. (3): b = exp((ln N_max - ln N_min) / (L - 1))."""
        if self.n_levels <= 1:
            return 1.0
        return math.exp(math.log(self.finest_resolution / self.base_resolution) / (self.n_levels - 1))

    @property
    def n_output_dims(self) -> int:
        return self.n_levels * self.n_features_per_level


def level_layout(cfg: HashGridConfig) -> list[tuple[float, int, int, int, bool]]:
    """Per level: (scale, resolution, table offset, table size, hashed), following tinycudann's grid.h.

    tinycudann counts `base_resolution` in grid vertices: scale_l = b^l N_min - 1 and a level has
    ceil(scale_l) + 1 vertices per axis. A level whose dense grid fits in 2^log2_hashmap_size entries is
    indexed densely (size rounded up to a multiple of 8); finer levels share a hashed table of that size.
    """
    log2_b = math.log2(cfg.per_level_scale)
    max_size = 1 << cfg.log2_hashmap_size
    layout = []
    offset = 0
    for level in range(cfg.n_levels):
        scale = float(torch.tensor(2.0 ** (level * log2_b) * cfg.base_resolution - 1.0, dtype=torch.float32))
        resolution = math.ceil(scale) + 1
        dense = resolution**3
        size = min(-(-dense // 8) * 8, max_size)
        layout.append((scale, resolution, offset, size, dense > size))
        offset += size
    return layout


class TorchHashGrid(nn.Module):
    """Pure PyTorch hash grid: per level, one gather of the 8 cell corners and their trilinear blend.

    Forward and backward are written out in `_HashGridFunction`: the backward pass is a scatter-add
    (`bincount` on the CPU), several times faster there than autograd's backward of a gather. No gradient
    flows to the positions (the field takes normals by finite differences).
    """

    def __init__(self, cfg: HashGridConfig = HashGridConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.layout = level_layout(cfg)
        n_entries = self.layout[-1][2] + self.layout[-1][3]
        # One flat table [entries, F] in tinycudann's order: level l owns rows offset_l : offset_l + size_l.
        table = torch.empty(n_entries, cfg.n_features_per_level).uniform_(-INIT_SCALE, INIT_SCALE)
        self.table = nn.Parameter(table)

    @property
    def n_output_dims(self) -> int:
        return self.cfg.n_output_dims

    def level_rows_and_weights(self, xt: Tensor, level: int) -> tuple[Tensor, Tensor]:
        """xt [3, N] (positions in [0, 1], axis-major) -> the level's sub-table rows [8, N], weights [8, N].

        Corner c of a cell is offset by bits (x, y, z) = (c & 1, c >> 1 & 1, c >> 2 & 1). Everything is
        corner-major and contiguous along N: broadcasting along a short last axis does not vectorize on
        the CPU.
        """
        scale, resolution, _, size, hashed = self.layout[level]
        # tinycudann's pos_fract: pos = scale * x + 0.5 staggers the levels (Instant-NGP appendix A).
        pos = xt * scale + 0.5
        cell = pos.floor()
        frac = pos - cell
        # A corner's weight is the product over axes of frac (bit 1) or 1 - frac (bit 0).
        wx, wy, wz = (torch.stack((1.0 - f, f)) for f in frac)  # [2, N] each
        w = (wz[:, None, None] * wy[None, :, None]) * wx[None, None, :]  # [2 (z), 2 (y), 2 (x), N]

        # (resolution + 1) * size < 2^31 keeps every product below in int32 without overflow.
        itype = torch.int32 if (resolution + 1) * max(size, resolution * resolution) < 2**31 else torch.int64
        c = cell.to(itype)
        cx, cy, cz = (torch.stack((ci, ci + 1)) for ci in c)  # [2, N] each
        if hashed:
            # Instant-NGP eq. (4). size is 2^k, so only the low k bits matter: reduce the primes mod 2^k
            # first; the products then fit in int32 and XOR keeps the low bits.
            mask = size - 1
            px, py, pz = (p & mask for p in HASH_PRIMES)
            rows = ((cz * pz)[:, None, None] ^ (cy * py)[None, :, None]) ^ (cx * px)[None, None, :]
            rows = rows & mask
        else:
            # Dense level: x + y R + z R^2; tinycudann wraps the few out-of-range corners modulo the size.
            # Corners lie in [0, R]^3, so rows < R^3 + R^2 + R < 2 R^3 <= 2 size: one conditional subtraction
            # is the modulo (and several times cheaper than integer division on the CPU).
            rows = ((cz * (resolution * resolution))[:, None, None] + (cy * resolution)[None, :, None]) + cx
            rows = torch.where(rows >= size, rows - size, rows)
        return rows.reshape(8, -1), w.reshape(8, -1)

    def forward(self, x: Tensor) -> Tensor:
        """x [N, 3] in [0, 1]^3 -> features [N, L * F] (level-major, as tinycudann)."""
        # NaN would index outside the table; map it to the box's corner (the field zeroes such points anyway).
        xt = torch.nan_to_num(x.detach().to(self.table.dtype), nan=0.0).clamp(0.0, 1.0).t().contiguous()
        # torch leaves autograd.Function.apply unannotated.
        return cast(Tensor, _HashGridFunction.apply(self.table, xt, self))  # type: ignore[no-untyped-call]


def _blend_corners(sub: Tensor, rows: Tensor, w: Tensor) -> Tensor:
    """sum_c w[c] * sub[rows[c]]: sub [E, F], rows and w [8, N] -> [N, F]."""
    n_feat = sub.shape[1]
    if n_feat == 2 and sub.dtype == torch.float32 and sub.is_contiguous():
        # A pair of fp32 features read as one complex64 is gathered and blended in single vectorized passes
        # (a row gather and a broadcast along a last axis of size 2 are both several times slower on the CPU).
        corners = sub.view(torch.complex64).view(-1).index_select(0, rows.reshape(-1)).view(rows.shape)
        return torch.view_as_real((corners * w).sum(0))
    corners = sub.index_select(0, rows.reshape(-1)).view(*rows.shape, n_feat)
    return (corners * w.unsqueeze(-1)).sum(0)


class _HashGridFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, table: Tensor, xt: Tensor, grid: TorchHashGrid) -> Tensor:
        levels, saved = [], []
        for level, (_, _, offset, size, _) in enumerate(grid.layout):
            checkpoint()  # a level of a 512 px render takes seconds on a CPU: let a cancel in between
            rows, w = grid.level_rows_and_weights(xt, level)  # [8, N]
            levels.append(_blend_corners(table[offset : offset + size], rows, w))  # [N, F]
            saved += [rows, w]
        ctx.grid = grid
        ctx.save_for_backward(*saved)
        return torch.stack(levels, 1).view(xt.shape[1], grid.cfg.n_output_dims)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, None]:
        grid: TorchHashGrid = ctx.grid
        saved = ctx.saved_tensors
        n_feat = grid.cfg.n_features_per_level
        n = grad_out.shape[0]
        # [N, L * F] -> [L, F, N]: one transpose so each level's gradient is contiguous along N.
        grad_out = grad_out.reshape(n, -1).t().contiguous().view(grid.cfg.n_levels, n_feat, n)
        # Every row is written below (bincount returns exactly `size` bins), so no zero fill is needed.
        on_cpu = grad_out.device.type == "cpu"
        alloc = torch.empty if on_cpu else torch.zeros
        grad_table = alloc(grid.table.shape, dtype=grad_out.dtype, device=grad_out.device)
        for level, (_, _, offset, size, _) in enumerate(grid.layout):
            checkpoint()
            rows, w = saved[2 * level], saved[2 * level + 1]  # [8, N]
            g = grad_out[level]  # [F, N]
            dst = grad_table[offset : offset + size]
            if on_cpu:
                # d out / d table[row] = corner weight: scatter-add with bincount (index_add_ is serial there).
                flat_rows = rows.reshape(-1)
                for f in range(n_feat):
                    dst[:, f] = torch.bincount(flat_rows, weights=(w * g[f]).reshape(-1), minlength=size)
            else:
                src = (w.unsqueeze(-1) * g.t().unsqueeze(0)).reshape(-1, n_feat)  # [8 N, F]
                dst.index_add_(0, rows.reshape(-1).long(), src)
        return grad_table, None, None


def tcnn_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import tinycudann  # noqa: F401
    except Exception:  # ImportError, or a build for another GPU architecture failing at import
        return False
    return True


class TcnnHashGrid(nn.Module):
    """tinycudann's fused HashGrid (CUDA only), fp32 parameters and output.

    `params` is tinycudann's flat parameter vector; viewed as [entries, F] it has the same layout as
    `TorchHashGrid.table` (see `level_layout`).
    """

    def __init__(self, cfg: HashGridConfig = HashGridConfig()) -> None:
        super().__init__()
        import tinycudann as tcnn

        self.cfg = cfg
        self.encoding = tcnn.Encoding(
            n_input_dims=3,
            encoding_config={
                "otype": "HashGrid",
                "n_levels": cfg.n_levels,
                "n_features_per_level": cfg.n_features_per_level,
                "log2_hashmap_size": cfg.log2_hashmap_size,
                "base_resolution": cfg.base_resolution,
                "per_level_scale": cfg.per_level_scale,
                "interpolation": "Linear",
            },
            dtype=torch.float32,
        )
        # Re-draw the table from torch's RNG so that torch.manual_seed(seed) decides it, as for TorchHashGrid.
        with torch.no_grad():
            init = torch.empty(self.encoding.params.shape, dtype=torch.float32).uniform_(
                -INIT_SCALE, INIT_SCALE
            )
            self.encoding.params.copy_(init)

    @property
    def n_output_dims(self) -> int:
        return self.cfg.n_output_dims

    @property
    def table(self) -> Tensor:
        """The parameters viewed as [entries, F] (a view: writes go to the encoding)."""
        return cast(Tensor, self.encoding.params.view(-1, self.cfg.n_features_per_level))

    def forward(self, x: Tensor) -> Tensor:
        """x [N, 3] in [0, 1]^3 -> features [N, L * F] float32."""
        return cast(Tensor, self.encoding(x.float().clamp(0.0, 1.0)).float())


def make_hash_grid(cfg: HashGridConfig, device: torch.device | str) -> TorchHashGrid | TcnnHashGrid:
    """tinycudann on CUDA when it imports, else the PyTorch grid; moved to `device`."""
    device = torch.device(device)
    if device.type == "cuda" and tcnn_available():
        return TcnnHashGrid(cfg).to(device)
    return TorchHashGrid(cfg).to(device)
