"""The wire format: what a site reconstructs is bit for bit what the coordinator holds, and reduced
precision stays within the stated tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from mammo_fl.common.federation import wire as W


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
