"""The wire format: what a site reconstructs is bit for bit what the coordinator holds, and reduced
precision stays within the stated tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from mammo_fl.common.federation import wire as W
from mammo_fl.common.federation.wire_int8 import INT8_BLOCK


def _model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "conv.weight": rng.normal(0, 0.05, (8, 3, 3, 3)).astype(np.float32),
        "bn.running_var": rng.uniform(0.5, 2.0, 8).astype(np.float32),
        "bn.num_batches_tracked": np.array(7, np.int64),
        "head.bias": np.zeros(2, np.float32),
        "scalar": np.array(1.5, np.float32),
    }


def _step(base: dict[str, np.ndarray], rng: np.random.Generator, size: float = 1e-5) -> dict[str, np.ndarray]:
    """A fine-tuning-sized update (Adam moves weights by ~lr per step)."""
    out = {k: (v + rng.normal(0, size, v.shape).astype(np.float32)) if v.dtype == np.float32 else v + 3
           for k, v in base.items()}
    out["head.bias"] = base["head.bias"].copy()  # an array that did not change
    return out


def test_full_is_exact_and_checks_the_layout():
    rng = np.random.default_rng(0)
    arrays = _model(rng)
    layout = W.Layout.of(arrays)
    got = W.unpack(W.pack_full(arrays, layout), layout)
    assert W.arrays_digest(got) == W.arrays_digest(arrays)
    assert got["bn.num_batches_tracked"].dtype == np.int64 and got["scalar"].shape == ()
    other = W.Layout.of({k: v for k, v in arrays.items() if k != "scalar"})
    with pytest.raises(W.WireError, match="layout"):
        W.unpack(W.pack_full(arrays, layout), other)


@pytest.mark.parametrize("dtype,rel", [("fp32", 1e-6), ("fp16", 2.0**-11), ("bf16", 2.0**-8)])
def test_site_reconstructs_the_published_model_bit_for_bit(dtype, rel):
    rng = np.random.default_rng(1)
    base = _model(rng)
    new = _step(base, rng)
    layout = W.Layout.of(base)
    published, packed = W.publish(new, base, layout, dtype)
    at_site = W.unpack(packed, layout, base)
    assert W.arrays_digest(at_site) == W.arrays_digest(published)
    for k in layout.float_keys:  # the published model differs from the exact aggregate by the stated bound
        d_true = new[k].astype(np.float64) - base[k]
        d_got = published[k].astype(np.float64) - base[k]
        bound = rel * np.abs(d_true) + 2.0**-24 * np.abs(base[k]) + 1e-12
        assert np.all(np.abs(d_got - d_true) <= bound), k
    assert int(published["bn.num_batches_tracked"]) == 10
    np.testing.assert_array_equal(published["head.bias"], base["head.bias"])
    width = {"fp32": 4, "fp16": 2, "bf16": 2}[dtype]
    n_float = sum(base[k].size for k in layout.float_keys)
    assert packed.floats.nbytes == width * n_float


def test_fp16_scaling_keeps_tiny_updates_out_of_the_subnormal_range():
    base = {"w": np.full(1000, 0.3, np.float32)}
    new = {"w": base["w"] + np.linspace(-3e-6, 3e-6, 1000, dtype=np.float32)}
    layout = W.Layout.of(base)
    published, _ = W.publish(new, base, layout, "fp16")
    d_true = new["w"].astype(np.float64) - base["w"]
    d_got = published["w"].astype(np.float64) - base["w"]
    # unscaled fp16 would round 3e-6 to a multiple of 6e-8 (2% error); scaled it is within 2^-11
    assert np.max(np.abs(d_got - d_true)) <= 2.0**-11 * 3e-6 + 2.0**-24 * 0.3


@pytest.mark.parametrize("dtype", W.WIRE_DTYPES)
def test_nan_and_inf_survive_encoding(dtype):
    base = {"w": np.zeros(6, np.float32)}
    new = {"w": np.array([1e-4, np.nan, -np.inf, np.inf, -2e-5, 0.0], np.float32)}
    layout = W.Layout.of(base)
    got = W.unpack(W.pack_delta(new, base, layout, dtype), layout, base)["w"]
    assert np.isnan(got[1]) and not np.isfinite(got[2]) and not np.isfinite(got[3])
    assert np.isfinite(got[[0, 4, 5]]).all() and got[0] == pytest.approx(1e-4, rel=1e-2)


def test_delta_needs_its_base_and_the_right_sizes():
    rng = np.random.default_rng(2)
    base = _model(rng)
    layout = W.Layout.of(base)
    packed = W.pack_delta(_step(base, rng), base, layout, "fp16")
    with pytest.raises(W.WireError, match="base"):
        W.unpack(packed, layout)
    packed.floats = packed.floats[:-1]
    with pytest.raises(W.WireError, match="sizes"):
        W.unpack(packed, layout, base)
    with pytest.raises(Exception, match="wire-dtype"):
        W.pack_delta(base, base, layout, "fp8")


def test_changed_keys_and_digest():
    rng = np.random.default_rng(3)
    base = _model(rng)
    new = _step(base, rng)
    assert "head.bias" not in W.changed_keys(new, base) and "conv.weight" in W.changed_keys(new, base)
    assert W.arrays_digest(base) != W.arrays_digest(new)
    assert W.arrays_digest(dict(reversed(list(base.items())))) == W.arrays_digest(base)


def _scale_per_element(packed: W.Packed, layout: W.Layout) -> dict[str, np.ndarray]:
    """The int8 block scale that applies to each element, per float array."""
    out, pos = {}, 0
    for k in layout.float_keys:
        n = int(np.prod(layout.shapes[layout.keys.index(k)]))
        blocks = -(-n // INT8_BLOCK)
        out[k] = np.repeat(packed.scales[pos:pos + blocks].astype(np.float64), INT8_BLOCK)[:n]
        pos += blocks
    assert pos == packed.scales.size
    return out


def _block_max(d: np.ndarray) -> np.ndarray:
    """max|d| of each element's block."""
    padded = np.zeros(-(-d.size // INT8_BLOCK) * INT8_BLOCK)
    padded[:d.size] = np.abs(d)
    return np.repeat(padded.reshape(-1, INT8_BLOCK).max(axis=1), INT8_BLOCK)[:d.size]


@pytest.mark.parametrize("tails", ["normal", "heavy"])
def test_int8_round_trip_is_within_half_a_step_of_each_block(tails):
    """|decoded - d| <= scale / 2 (+ one float32 rounding), scale = max|d in the block| / 127; an outlier
    coarsens only its own block; all-zero blocks come back as exact zeros."""
    rng = np.random.default_rng(4)

    def draw(n: int) -> np.ndarray:
        x = rng.normal(0, 1e-4, n) if tails == "normal" else rng.standard_t(1.5, n) * 1e-5
        return x.astype(np.float32)

    outlier = draw(3 * INT8_BLOCK)
    outlier[INT8_BLOCK + 7] = 0.5  # one huge element in the second block
    zeros = np.zeros(2 * INT8_BLOCK + 5, np.float32)
    zeros[INT8_BLOCK:INT8_BLOCK + 3] = 1e-6  # only the middle block is not all zero
    delta = {"w": draw(5000).reshape(50, 100), "o": outlier, "z": zeros, "tiny": draw(3), "s": np.float32(2e-5)}
    base = {k: np.zeros(np.shape(v), np.float32) for k, v in delta.items()}  # base 0: d is exactly `delta`
    layout = W.Layout.of(base)
    packed = W.pack_delta(delta, base, layout, "int8")
    got = W.unpack(packed, layout, base)
    scale = _scale_per_element(packed, layout)
    for k in layout.float_keys:
        d = np.asarray(delta[k], np.float64).reshape(-1)
        top = _block_max(d)
        assert np.all(scale[k] >= top / 127) and np.all(scale[k] <= top / 127 * (1 + 2.0**-23)), k
        err = np.abs(got[k].astype(np.float64).reshape(-1) - d)
        assert np.all(err <= scale[k] * (0.5 + 2.0**-17)), (k, float(np.max(err / np.maximum(scale[k], 1e-300))))
        assert np.all(err <= top / 254 * (1 + 2.0**-16)), k
    assert np.max(np.abs(got["w"].astype(np.float64) - delta["w"])) > 0  # the precision really was reduced
    # the outlier coarsens its own block only: one scale for the whole array would allow an error of
    # 0.5 / 254 everywhere and round every |d| below that to 0
    per_tensor = 0.5 / 254
    for block in (slice(0, INT8_BLOCK), slice(2 * INT8_BLOCK, None)):
        assert np.max(np.abs(got["o"][block] - outlier[block])) < per_tensor / 10
        assert np.count_nonzero(got["o"][block]) > np.count_nonzero(np.abs(outlier[block]) >= per_tensor) + 100
    assert np.all(got["z"][:INT8_BLOCK] == 0) and np.all(got["z"][2 * INT8_BLOCK:] == 0)
    assert packed.scales.size == 3 + 1 + 1 + 5 + 3  # blocks of o, s, tiny, w, z (the last one short)


def test_int8_non_finite_elements_decode_as_nan_and_do_not_set_the_scale():
    d = np.full(INT8_BLOCK + 4, 1e-5, np.float32)
    d[[0, 1, 2]] = [np.nan, np.inf, -np.inf]
    d[INT8_BLOCK:] = np.inf  # a block with nothing finite
    base = {"w": np.zeros_like(d)}
    layout = W.Layout.of(base)
    packed = W.pack_delta({"w": d}, base, layout, "int8")
    assert list(packed.floats[:3]) == [-128, -128, -128] and np.all(packed.floats[INT8_BLOCK:] == -128)
    assert packed.scales[0] == pytest.approx(1e-5 / 127, rel=1e-6) and packed.scales[1] == 0
    got = W.unpack(packed, layout, base)["w"]
    assert np.isnan(got[:3]).all() and np.isnan(got[INT8_BLOCK:]).all()
    np.testing.assert_allclose(got[3:INT8_BLOCK], 1e-5, rtol=1e-6)


def test_int8_is_a_quarter_of_the_fp32_bytes_on_a_real_layout():
    """ResNet18 trunk + top (the benchmark's mid-size model): codes + block scales <= 0.26x fp32."""
    from mammo_fl.common.federation import protocol as P
    from mammo_fl.common.models import build_model

    spec = {"trunk": "resnet18", "top": {"type": "vgg", "blocks": [[64, 1]]}, "num_classes": 2}
    base = P.state_to_numpy(build_model("whole_image", spec).state_dict())
    layout = W.Layout.of(base)
    rng = np.random.default_rng(5)
    new = {k: v + rng.normal(0, 1e-5, v.shape).astype(np.float32) if k in layout.float_keys else v
           for k, v in base.items()}
    fp32 = W.pack_delta(new, base, layout, "fp32").nbytes
    packed = W.pack_delta(new, base, layout, "int8")
    assert packed.nbytes <= 0.26 * fp32, packed.nbytes / fp32
    assert packed.floats.dtype == np.int8 and packed.floats.size == sum(base[k].size for k in layout.float_keys)


def test_int8_site_reconstructs_the_published_model_bit_for_bit_through_the_records():
    """publish on the coordinator, the Flower records on the wire, unpack at the site: the same bits."""
    from mammo_fl.common.federation import protocol as P

    rng = np.random.default_rng(6)
    base = _model(rng)
    new = _step(base, rng)
    layout = W.Layout.of(base)
    published, packed = W.publish(new, base, layout, "int8")
    record, meta = P.packed_to_records(packed)
    assert sorted(record) == [P.FLOATS, P.INTS, P.SCALES]
    at_site = W.unpack(P.packed_from_records(record, meta), layout, base)
    assert W.arrays_digest(at_site) == W.arrays_digest(published)
    assert int(published["bn.num_batches_tracked"]) == 10
    np.testing.assert_array_equal(published["head.bias"], base["head.bias"])  # unchanged: exact
    assert not np.array_equal(published["conv.weight"], new["conv.weight"])  # but int8 is not exact
    del record[P.SCALES]
    with pytest.raises(W.WireError, match="missing"):
        P.packed_from_records(record, meta)
    packed.scales = packed.scales[:-1]
    with pytest.raises(W.WireError, match="block scales"):
        W.unpack(packed, layout, base)
