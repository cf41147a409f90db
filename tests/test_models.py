"""Model builders, conversion to whole-image models, stage-2 mapping, pretrained trunk loading."""

from __future__ import annotations

import time

import pytest
import torch
from model_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)
from torchvision.models import resnet18, resnet34, vgg16

from mammo_fl.common.utils.errors import ConfigError, DataError
from mammo_fl.common.models import PAPER_TOPS, build_model, convert_patch_to_whole, load_pretrained_trunk, stage2_modules
from mammo_fl.common.models.patch import vgg16_features
from mammo_fl.common.models.spec import TRUNK_ARCHS, trunk_stride

TINY_RESNET_TOP = {"type": "resnet", "blocks": [[16, 16, 32, 1], [16, 16, 32, 1]]}
TINY_VGG_TOP = {"type": "vgg", "blocks": [[32, 1], [16, 1]]}


@pytest.mark.parametrize("arch", ["resnet_tiny", "vgg_tiny", "resnet_small"])
def test_patch_model_outputs_five_logits(arch: str) -> None:
    model = build_model("patch", {"arch": arch})
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    assert [n for n, _ in model.named_children()] == ["trunk", "pool", "dropout", "fc"]


@pytest.mark.parametrize("top", [TINY_RESNET_TOP, TINY_VGG_TOP, PAPER_TOPS["heatmap_resnet"]])
@pytest.mark.parametrize("arch", ["resnet_tiny", "vgg_tiny"])
def test_conversion_keeps_trunk_weights_exactly(arch: str, top: dict) -> None:
    torch.manual_seed(0)
    patch = build_model("patch", {"arch": arch})
    whole = convert_patch_to_whole(patch, top)
    ps, ws = patch.trunk.state_dict(), whole.trunk.state_dict()
    assert ps.keys() == ws.keys()
    assert all(torch.equal(ps[k], ws[k]) for k in ps)
    x = torch.randn(2, 3, 96, 64)
    patch.eval(), whole.eval()
    assert torch.equal(patch.trunk(x), whole.trunk(x))
    assert whole(x).shape == (2, 2)
    assert [n for n, _ in whole.named_children()] == ["trunk", "top", "head"]


def test_heatmap_layer_is_initialised_from_patch_dense_layer() -> None:
    patch = build_model("patch", {"arch": "resnet_tiny"}).eval()
    whole = convert_patch_to_whole(patch, {"type": "heatmap_fc", "avg_pool": 2, "pool": 2, "fc": [8, 4]},
                                   input_size=(128, 96)).eval()
    conv = whole.top.heatmap.conv
    assert torch.equal(conv.weight[:, :, 0, 0], patch.fc.weight) and torch.equal(conv.bias, patch.fc.bias)
    # on a patch-sized input the heatmap (one location) equals relu(patch logits)
    x = torch.randn(1, 3, 64, 64)
    heat = whole.top.heatmap(whole.trunk(x))
    assert heat.shape[-2:] == (1, 1)
    torch.testing.assert_close(heat[:, :, 0, 0], torch.relu(patch(x)))
    assert whole(torch.randn(2, 3, 128, 96)).shape == (2, 2)


def test_heatmap_fc_needs_input_size_and_bad_specs_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="input_size"):
        build_model("whole_image", {"trunk": "resnet_tiny", "top": {"type": "heatmap_fc"}})
    with pytest.raises(ConfigError, match="unknown model arch"):
        build_model("patch", {"arch": "resnet5000"})
    with pytest.raises(ConfigError, match="top spec type"):
        build_model("whole_image", {"trunk": "resnet_tiny", "top": {"type": "transformer"}})
    with pytest.raises(ConfigError, match=r"\[L, M, N, K\]"):
        build_model("whole_image", {"trunk": "resnet_tiny", "top": {"type": "resnet", "blocks": [[1, 2]]}})
    with pytest.raises(ConfigError, match="kind"):
        build_model("segmentation", {"arch": "resnet_tiny"})


def test_top_block_geometry_follows_the_paper() -> None:
    # [L-M-N]xK: K units; first has stride 2 + projection shortcut; output N channels
    whole = build_model("whole_image", {"trunk": "resnet_tiny", "top": {"type": "resnet",
                                                                          "blocks": [[8, 8, 16, 2], [8, 8, 24, 1]]}})
    assert [len(b) for b in whole.top.blocks] == [2, 1]
    fmap = torch.randn(1, 128, 12, 10)
    assert whole.top(fmap).shape == (1, 24, 3, 3)
    vgg = build_model("whole_image", {"trunk": "resnet_tiny", "top": {"type": "vgg", "blocks": [[8, 2], [4, 1]]}})
    assert vgg.top(fmap).shape == (1, 4, 3, 3)


@pytest.mark.slow
def test_vgg16_features_match_torchvision_layout() -> None:
    ours, theirs = vgg16_features(), vgg16(weights=None).features
    assert [type(m) for m in ours] == [type(m) for m in theirs]
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_stage2_mapping_matches_paper_modules() -> None:
    r50 = build_model("patch", {"arch": "resnet50"})
    mods = stage2_modules(r50)
    assert mods[0] is r50.trunk.layer3[5] and mods[1] is r50.trunk.layer4 and mods[-1] is r50.fc
    v = build_model("patch", {"arch": "vgg16"})
    vm = stage2_modules(v)
    assert vm[0] is v.trunk[17] and isinstance(v.trunk[17], torch.nn.Conv2d) and vm[-2] is v.trunk[30]
    # conv4_1 of VGG16 takes 256 channels
    assert v.trunk[17].in_channels == 256 and v.trunk[17].out_channels == 512


def test_load_pretrained_trunk_from_torchvision_state_dict(tmp_path) -> None:
    torch.manual_seed(1)
    ref = resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    model = build_model("patch", {"arch": "resnet18"})
    fc_before = model.fc.weight.clone()
    load_pretrained_trunk(model, path)
    assert torch.equal(model.trunk.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    assert torch.equal(model.trunk.bn1.running_var, ref.bn1.running_var)
    assert torch.equal(model.fc.weight, fc_before)  # classifier keys ignored
    # VGG16: features.* mapped, classifier.* ignored
    # (a torchvision-layout file: features.* plus a classifier, kept small here)
    features = vgg16_features()
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 25088)
    vpath = tmp_path / "vgg16.pth"
    torch.save(state, vpath)
    whole = build_model("whole_image", {"trunk": "vgg16", "top": TINY_VGG_TOP})
    load_pretrained_trunk(whole, vpath)
    assert torch.equal(whole.trunk[28].weight, features[28].weight)


def test_load_pretrained_trunk_errors_are_one_line(tmp_path) -> None:
    torch.save(resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    model = build_model("patch", {"arch": "resnet18"})
    with pytest.raises(DataError, match="does not match a torchvision resnet18 trunk") as exc:
        load_pretrained_trunk(model, tmp_path / "r34.pth")
    assert "\n" not in str(exc.value)
    (tmp_path / "junk.pth").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="not a readable"):
        load_pretrained_trunk(model, tmp_path / "junk.pth")
    with pytest.raises(DataError, match="not found"):
        load_pretrained_trunk(model, tmp_path / "missing.pth")


def test_all_archs_are_buildable_with_stride_32() -> None:
    for arch in TRUNK_ARCHS:
        if arch in ("resnet50", "vgg16", "resnet34"):
            continue  # large; covered elsewhere
        m = build_model("patch", {"arch": arch}).eval()
        expected = (4, 3) if trunk_stride(arch) == 32 else (8, 6)
        with torch.no_grad():
            assert m.trunk(torch.zeros(1, 3, 128, 96)).shape[-2:] == expected


def test_resnet_tiny16_has_stride_16_and_converts_to_whole_image() -> None:
    # same widths/blocks as resnet_tiny, so the same parameter count; only layer4 keeps the resolution
    tiny = build_model("patch", {"arch": "resnet_tiny"})
    tiny16 = build_model("patch", {"arch": "resnet_tiny16"}).eval()
    assert sum(p.numel() for p in tiny16.parameters()) == sum(p.numel() for p in tiny.parameters())
    assert trunk_stride("resnet_tiny16") == 16 and trunk_stride("resnet_tiny") == 32
    with torch.no_grad():
        assert tiny16.trunk(torch.zeros(1, 3, 56, 56)).shape[-2:] == (4, 4)
    whole = convert_patch_to_whole(tiny16, TINY_RESNET_TOP).eval()
    with torch.no_grad():
        assert whole.trunk(torch.zeros(1, 3, 288, 224)).shape[-2:] == (18, 14)
        assert whole(torch.zeros(2, 3, 288, 224)).shape == (2, 2)
    assert [id(m) for m in stage2_modules(tiny16)] == [id(tiny16.trunk.layer4), id(tiny16.fc)]


def test_paper_preset_geometry_on_meta_device() -> None:
    """Shape-only pass (no compute): ResNet50 / VGG16 trunks give 36x28 at 1152x896, the tops 9x7."""
    with torch.device("meta"):
        for trunk, top, channels in (("resnet50", "resnet_512x2", 1024), ("vgg16", "vgg_256_128", 128)):
            model = build_model("whole_image", {"trunk": trunk, "top": PAPER_TOPS[top]})
            fmap = model.trunk(torch.empty(1, 3, 1152, 896))
            assert fmap.shape[-2:] == (36, 28)
            assert model.top(fmap).shape == (1, channels, 9, 7)
            assert model(torch.empty(2, 3, 1152, 896)).shape == (2, 2)
        # heatmap + max-pool 5x5 + FC: 36x28 -> avg-pool 7 -> 30x22 heatmap -> 6x4 -> 5 * 24 = 120 values
        hfc = build_model("whole_image", {"trunk": "resnet50", "top": PAPER_TOPS["heatmap_fc"],
                                          "input_size": [1152, 896]})
        assert hfc.top.flat_features == 120 and hfc.top.out_features == 32 + 120
        assert hfc(torch.empty(2, 3, 1152, 896)).shape == (2, 2)


@pytest.mark.slow
def test_paper_preset_forward_gives_36x28_trunk_map() -> None:
    """ResNet50 trunk + [512-512-1024]x2 on one 1152x896 image on CPU (6 s on 2 free cores, ~16 s under load)."""
    model = build_model("whole_image", {"trunk": "resnet50", "top": PAPER_TOPS["resnet_512x2"]}).eval()
    start = time.perf_counter()
    with torch.no_grad():
        fmap = model.trunk(torch.zeros(1, 3, 1152, 896))
        top = model.top(fmap)
        logits = model.head(top)
    assert fmap.shape == (1, 2048, 36, 28)
    assert top.shape == (1, 1024, 9, 7)
    assert logits.shape == (1, 2)
    assert time.perf_counter() - start < 120


@pytest.mark.slow
def test_vgg16_paper_trunk_map_is_36x28() -> None:
    model = build_model("whole_image", {"trunk": "vgg16", "top": PAPER_TOPS["vgg_512x1"]}).eval()
    with torch.no_grad():
        assert model.trunk(torch.zeros(1, 3, 1152, 896)).shape == (1, 512, 36, 28)
