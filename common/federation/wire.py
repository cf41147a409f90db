"""What travels between coordinator and site: packed weights, full or as a delta, in fp32 / fp16 / bf16 / int8.

Pure numpy (no Flower, no torch), used by both sides so that they compute bit-identical models.

- A *layout* is the ordered list of exchanged arrays (sorted keys, shapes, dtypes). Both sides derive
  it from the model and check its digest, so names never need to travel.
- Everything is packed into two flat buffers: `floats` (the float32 arrays, encoded) and `ints`
  (integer buffers such as BatchNorm's `num_batches_tracked`, always exact int64), plus `scales`
  for an int8 delta. One Flower Array per buffer instead of one per tensor: fewer objects for
  Flower to hash, store and ship.
- `full`: float32 values as they are (the first message to a site, or a site that lost its copy).
- `delta`: `new - base` encoded in the wire dtype; the receiver computes `base + decode(delta)`.
  The coordinator *publishes* exactly that expression as its new global model (`publish`), so a
  site that holds `base` reconstructs the coordinator's model bit for bit, whatever the wire dtype.
- fp16 uses one power-of-two scale per array (sent as its exponent) so that small updates
  (~1e-5) do not fall into fp16's subnormal range; bf16 has fp32's range and needs none.
  Per element the decoded delta is within |d| * 2^-11 (fp16; a further max|d| * 2^-38 near
  zero) or |d| * 2^-8 (bf16) of the true delta; NaN/Inf survive the encoding (so screening
  still sees them).
- int8 (common/federation/wire_int8.py) quantizes each float array in blocks of 1024 elements,
  symmetric, round to nearest, one float32 scale per block (= max|finite d in the block| / 127,
  sent in the `scales` buffer): per element |decoded - d| <= scale / 2, i.e. max|d in its
  block| / 254 (to one float32 ulp; plus one float32 rounding of the decoded value); all-zero
  blocks decode to exact zeros. Code -128 carries NaN/Inf, decoded as NaN (screening still
  rejects it). ~0.25x the fp32 bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mammo_fl.common.federation.wire_int8 import int8_blocks, int8_decode, int8_encode
from mammo_fl.common.utils.errors import ConfigError, MammoError

WIRE_DTYPES = ("fp32", "fp16", "bf16", "int8")
FULL = "full"
DELTA = "delta"
SAME = "same"  # the receiver already holds the model: nothing but its digest travels
FP16_TOP = 15  # scaled fp16 values stay below 2**15 (fp16 max is 65504)
WIRE_NUMPY = {"fp32": "float32", "fp16": "float16", "bf16": "uint16", "int8": "int8"}  # what `floats` holds


class WireError(MammoError):
    """A packed message does not fit the receiver's model (layout, base or digest mismatch)."""


def check_wire_dtype(name: str) -> str:
    if name not in WIRE_DTYPES:
        raise ConfigError(f"wire-dtype {name!r} unknown; choose one of {', '.join(WIRE_DTYPES)}")
    return name


@dataclass(frozen=True)
class Layout:
    """The exchanged arrays in wire order."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @classmethod
    def of(cls, arrays: Mapping[str, np.ndarray], keys: Sequence[str] | None = None) -> Layout:
        names = sorted(arrays if keys is None else keys)
        for k in names:
            dt = np.asarray(arrays[k]).dtype
            if dt != np.float32 and not np.issubdtype(dt, np.integer):
                raise WireError(f"array {k!r} has dtype {dt}; the wire carries float32 and integer arrays only")
        return cls(tuple(names), tuple(tuple(np.shape(arrays[k])) for k in names),
                   tuple(str(np.asarray(arrays[k]).dtype) for k in names))

    @classmethod
    def of_specs(cls, specs: Mapping[str, tuple[tuple[int, ...], str]], keys: Sequence[str]) -> Layout:
        """From (shape, numpy dtype name) per key, e.g. read off a torch state dict without copying it."""
        names = sorted(keys)
        return cls.of({k: np.empty(specs[k][0], dtype=specs[k][1]) for k in names})

    @property
    def float_keys(self) -> list[str]:
        return [k for k, d in zip(self.keys, self.dtypes, strict=True) if d == "float32"]

    @property
    def int_keys(self) -> list[str]:
        return [k for k, d in zip(self.keys, self.dtypes, strict=True) if d != "float32"]

    def digest(self) -> str:
        h = hashlib.sha256()
        for k, s, d in zip(self.keys, self.shapes, self.dtypes, strict=True):
            h.update(f"{k}|{s}|{d}\n".encode())
        return h.hexdigest()[:16]


@dataclass
class Packed:
    """One direction's arrays as they go on the wire."""

    mode: str  # full | delta | same
    dtype: str  # fp32 | fp16 | bf16 | int8 (full is always fp32)
    floats: np.ndarray  # 1-D float32 | float16 | uint16 (bf16 bit patterns) | int8 (codes)
    ints: np.ndarray  # 1-D int64
    layout: str  # Layout.digest()
    exponents: list[int] = field(default_factory=list)  # fp16: one power-of-two scale per float array
    scales: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # int8: 1-D float32, per block

    @property
    def nbytes(self) -> int:
        return int(self.floats.nbytes + self.ints.nbytes + self.scales.nbytes)


def _empty(dtype: str) -> np.ndarray:
    return np.zeros(0, dtype=dtype)


def _pack_ints(arrays: Mapping[str, np.ndarray], layout: Layout) -> np.ndarray:
    keys = layout.int_keys
    if not keys:
        return _empty("int64")
    return np.concatenate([np.asarray(arrays[k], dtype=np.int64).reshape(-1) for k in keys])


def pack_full(arrays: Mapping[str, np.ndarray], layout: Layout) -> Packed:
    """The arrays themselves, float32 (exact)."""
    keys = layout.float_keys
    floats = (np.concatenate([np.asarray(arrays[k], dtype=np.float32).reshape(-1) for k in keys])
              if keys else _empty("float32"))
    return Packed(FULL, "fp32", floats, _pack_ints(arrays, layout), layout.digest())


def same(layout: Layout) -> Packed:
    return Packed(SAME, "fp32", _empty("float32"), _empty("int64"), layout.digest())


def _fp16_exponent(d: np.ndarray) -> int:
    """Power of two that brings max|d| (finite values) just below 2**15."""
    top = float(np.max(np.abs(d))) if d.size else 0.0
    if not np.isfinite(top):
        finite = d[np.isfinite(d)]
        top = float(np.max(np.abs(finite))) if finite.size else 0.0
    if top == 0.0:
        return 0
    return int(np.frexp(top)[1]) - FP16_TOP


def _bf16_bits(d: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, round to nearest even; NaN stays NaN."""
    u = d.view(np.uint32)
    rounded = ((u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))) >> 16).astype(np.uint16)
    nan = np.isnan(d)
    if nan.any():
        rounded[nan] = np.uint16(0x7FC0) | ((u[nan] >> 16) & np.uint32(0x8000)).astype(np.uint16)
    return rounded


def _encode(d: np.ndarray, dtype: str) -> tuple[np.ndarray, int, np.ndarray]:
    """One array's delta -> (encoded values, fp16 exponent, int8 block scales)."""
    none = _empty("float32")
    if dtype == "fp32":
        return d, 0, none
    if dtype == "fp16":
        e = _fp16_exponent(d)
        with np.errstate(over="ignore", invalid="ignore"):
            return np.ldexp(d, -e).astype(np.float16), e, none
    if dtype == "int8":
        codes, scales = int8_encode(d)
        return codes, 0, scales
    return _bf16_bits(d), 0, none


def _decode(q: np.ndarray, dtype: str, exponent: int, scales: np.ndarray) -> np.ndarray:
    if dtype == "fp32":
        return q
    if dtype == "fp16":
        return np.ldexp(q.astype(np.float32), exponent).astype(np.float32, copy=False)
    if dtype == "int8":
        return int8_decode(q, scales)
    return (q.astype(np.uint32) << 16).view(np.float32)


def pack_delta(new: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], layout: Layout, dtype: str) -> Packed:
    """`new - base` of the float arrays in `dtype`, integer arrays as their new values."""
    check_wire_dtype(dtype)
    parts, exponents, scales = [], [], []
    with np.errstate(invalid="ignore", over="ignore"):
        for k in layout.float_keys:
            d = (np.asarray(new[k], dtype=np.float32) - np.asarray(base[k], dtype=np.float32)).reshape(-1)
            q, e, s = _encode(d, dtype)
            parts.append(q)
            exponents.append(e)
            scales.append(s)
    floats = np.concatenate(parts) if parts else _empty(WIRE_NUMPY[dtype])
    return Packed(DELTA, dtype, floats, _pack_ints(new, layout), layout.digest(),
                  exponents if dtype == "fp16" else [], np.concatenate([_empty("float32"), *scales]))


def _check(packed: Packed, layout: Layout) -> None:
    if packed.layout != layout.digest():
        raise WireError("the packed arrays were made for a different model layout")
    n_float = sum(int(np.prod(s)) for s, d in zip(layout.shapes, layout.dtypes, strict=True) if d == "float32")
    n_int = sum(int(np.prod(s)) for s, d in zip(layout.shapes, layout.dtypes, strict=True) if d != "float32")
    if packed.mode != SAME and (packed.floats.size != n_float or packed.ints.size != n_int):
        raise WireError(f"packed sizes {packed.floats.size}+{packed.ints.size} do not match the layout "
                        f"({n_float}+{n_int})")
    if packed.mode == DELTA and packed.dtype == "fp16" and len(packed.exponents) != len(layout.float_keys):
        raise WireError("fp16 delta lacks its per-array exponents")
    if packed.mode == DELTA and packed.dtype == "int8" and packed.scales.size != _int8_scale_count(layout):
        raise WireError(f"int8 delta has {packed.scales.size} block scales, the layout needs "
                        f"{_int8_scale_count(layout)}")


def _int8_scale_count(layout: Layout) -> int:
    return sum(int8_blocks(int(np.prod(layout.shapes[layout.keys.index(k)]))) for k in layout.float_keys)


def unpack(packed: Packed, layout: Layout, base: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The arrays of `layout` from `packed` (a delta is applied to `base`)."""
    _check(packed, layout)
    if packed.mode == SAME:
        if base is None:
            raise WireError("'same' needs the model the receiver holds")
        return {k: base[k] for k in layout.keys}
    if packed.mode == DELTA and base is None:
        raise WireError("a delta needs the base model it was made against")
    out: dict[str, np.ndarray] = {}
    pos = spos = 0
    for i, k in enumerate(layout.float_keys):
        shape = layout.shapes[layout.keys.index(k)]
        n = int(np.prod(shape))
        q = packed.floats[pos:pos + n]
        pos += n
        if packed.mode == FULL:
            out[k] = np.array(q, dtype=np.float32).reshape(shape)
        else:
            e = packed.exponents[i] if packed.dtype == "fp16" else 0
            nb = int8_blocks(n) if packed.dtype == "int8" else 0
            scales = packed.scales[spos:spos + nb]
            spos += nb
            # the one expression both sides evaluate: base + decoded delta, in float32
            out[k] = (np.asarray(base[k], dtype=np.float32).reshape(-1)
                      + _decode(q, packed.dtype, e, scales)).reshape(shape)
    pos = 0
    for k in layout.int_keys:
        idx = layout.keys.index(k)
        n = int(np.prod(layout.shapes[idx]))
        out[k] = packed.ints[pos:pos + n].astype(layout.dtypes[idx]).reshape(layout.shapes[idx])
        pos += n
    return out


def publish(new: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], layout: Layout,
            dtype: str) -> tuple[dict[str, np.ndarray], Packed]:
    """(the model a site holding `base` will reconstruct, the delta that gets it there).

    The coordinator adopts the first as its global model: what it holds is what the sites hold."""
    packed = pack_delta(new, base, layout, dtype)
    return unpack(packed, layout, base), packed


def changed_keys(new: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]) -> list[str]:
    """Keys whose arrays differ (bitwise): only these need to travel."""
    return sorted(k for k in new if not np.array_equal(new[k], base[k]))


def arrays_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """Digest of a whole model (names, dtypes, shapes, bytes in key order): same model -> same digest."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.asarray(arrays[k])
        h.update(f"{k}|{a.dtype}|{a.shape}\n".encode())
        flat = (a if a.flags.c_contiguous else np.ascontiguousarray(a)).reshape(-1)
        h.update(flat.view(np.uint8))
    return h.hexdigest()
