"""Block-wise symmetric int8 quantization of a float32 delta (wire-dtype = "int8", common/federation/wire.py).

A 1-D float32 array is cut into blocks of INT8_BLOCK elements (the last one may be shorter). Each
block has one float32 scale = max|finite d in the block| / 127, rounded *up* to float32 so that
every |d| / scale <= 127; the code of an element is rint(d / scale) in [-127, 127] and decodes as
code * scale. So per element |decoded - d| <= scale / 2 (about max|d in its block| / 254), plus one
float32 rounding (2^-24 relative) of the decoded value. An all-zero block has scale 0 and decodes
to exact zeros. Code -128 marks a non-finite element (NaN, +Inf, -Inf) and decodes to NaN, so the
coordinator's screening still sees, and rejects, a non-finite update.
"""

from __future__ import annotations

import numpy as np

# One scale per 1024 elements: a single outlier (a BatchNorm shift, one large head weight) only
# coarsens its own block instead of flattening every small value of a whole tensor to 0, while the
# scales cost 4 bytes per 1 KiB of codes (0.4%). Smaller blocks buy little accuracy for more bytes.
INT8_BLOCK = 1024
INT8_TOP = 127  # codes -127..127: symmetric around 0
INT8_NONFINITE = -128  # the one code left over: NaN / +-Inf


def int8_blocks(n: int) -> int:
    """Number of blocks (= scales) for an array of n elements."""
    return -(-n // INT8_BLOCK)


def _blocks(values: np.ndarray, dtype: type) -> np.ndarray:
    """A 1-D array as (blocks, INT8_BLOCK) in `dtype`, the last block padded with zeros."""
    n_blocks = int8_blocks(values.size)
    padded = np.zeros(n_blocks * INT8_BLOCK, dtype)
    padded[:values.size] = values
    return padded.reshape(n_blocks, INT8_BLOCK)


def _scales(top: np.ndarray) -> np.ndarray:
    """float32 scales >= top / 127 (rounded up, so no code exceeds 127); 0 where top is 0."""
    exact = top.astype(np.float64) / INT8_TOP
    scales = exact.astype(np.float32)
    low = scales.astype(np.float64) < exact
    scales[low] = np.nextafter(scales[low], np.float32(np.inf))
    return scales


def int8_encode(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-D float32 delta -> (int8 codes, one float32 scale per block)."""
    finite = np.isfinite(d)
    blocks = _blocks(np.where(finite, d, np.float32(0.0)), np.float32)
    scales = _scales(np.abs(blocks).max(axis=1))
    # the quotient in float64 is exact enough that rint picks the nearest code: |error| <= scale / 2
    step = np.where(scales > 0, scales, np.float32(1.0)).astype(np.float64)[:, None]
    quotient = np.rint(blocks / step)  # all-zero blocks: 0 / 1 = 0
    codes = quotient.astype(np.int8).reshape(-1)[:d.size]  # |quotient| <= 127 by construction of the scales
    codes[~finite] = INT8_NONFINITE
    return codes, scales


def int8_decode(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Inverse of int8_encode up to the stated error; non-finite elements come back as NaN."""
    values = _blocks(codes, np.float32) * scales.astype(np.float32, copy=False)[:, None]
    out = values.reshape(-1)[:codes.size]
    out[codes == INT8_NONFINITE] = np.nan
    return out
