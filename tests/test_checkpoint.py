"""Self-describing checkpoints: round trip rebuilds an identical model; bad files give one-line errors."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)

from mammo_fl.common.models.checkpoint import FORMAT, WHOLE_IMAGE_CLASSES, load_checkpoint, read_checkpoint_meta, save_checkpoint
from mammo_fl.common.utils.errors import DataError
from mammo_fl.common.models import build_model, convert_patch_to_whole

PREP = {"height": 96, "width": 64, "mode": "paper", "mean": 52.18}


def _whole(top: dict | None = None, input_size=None):
    torch.manual_seed(0)
    patch = build_model("patch", {"arch": "resnet_tiny"})
    return convert_patch_to_whole(patch, top or {"type": "resnet", "blocks": [[8, 8, 16, 1], [8, 8, 16, 1]]},
                                  dropout=0.2, input_size=input_size)


@pytest.mark.parametrize("top,input_size", [
    (None, None),
    ({"type": "vgg", "blocks": [[16, 1], [8, 1]]}, None),
    ({"type": "heatmap_fc", "avg_pool": 2, "pool": 2, "fc": [8, 4]}, (96, 64)),
])
def test_round_trip_rebuilds_identical_model(tmp_path, top, input_size) -> None:
    model = _whole(top, input_size)
    # make BN running stats non-trivial so they must be saved too
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 96, 64))
    model.eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, kind="whole_image", model_spec=model.spec, preprocessing=PREP,
                    class_names=WHOLE_IMAGE_CLASSES, provenance={"stage": 2, "seed": 7}, metrics={"val_auc": 0.9})
    loaded = load_checkpoint(path)
    assert loaded.kind == "whole_image" and loaded.class_names == WHOLE_IMAGE_CLASSES
    assert loaded.preprocessing == PREP and loaded.metrics == {"val_auc": 0.9}
    assert loaded.provenance["seed"] == 7 and "torch" in loaded.provenance
    a, b = model.state_dict(), loaded.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 96, 64)
    assert torch.equal(model(x), loaded.model(x))
    # plain torch can read it with weights_only (no pickled classes)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["model_spec"] == model.spec
    meta = read_checkpoint_meta(path)
    assert "state_dict" not in meta and meta["model_spec"]["trunk"] == "resnet_tiny"


def test_patch_checkpoint_and_training_state(tmp_path) -> None:
    model = build_model("patch", {"arch": "vgg_tiny", "num_classes": 5})
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "p.pt", model, kind="patch", model_spec=model.spec, preprocessing=PREP,
                    class_names=["background", "a", "b", "c", "d"],
                    training_state={"optimizer": opt.state_dict(), "epoch": 3})
    loaded = load_checkpoint(tmp_path / "p.pt")
    assert loaded.training_state["epoch"] == 3
    opt2 = torch.optim.Adam(loaded.model.parameters())
    opt2.load_state_dict(loaded.training_state["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_bad_checkpoints_give_one_line_data_errors(tmp_path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DataError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"a": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(DataError, match="not a mammo-fl/v1 checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    model = _whole()
    save_checkpoint(tmp_path / "m.pt", model, kind="whole_image", model_spec=model.spec, preprocessing=PREP,
                    class_names=WHOLE_IMAGE_CLASSES)
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload["model_spec"]["top"]["blocks"][0][2] = 32  # weights no longer fit the spec
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(DataError, match="do not match") as exc:
        load_checkpoint(tmp_path / "mismatch.pt")
    assert "\n" not in str(exc.value)
    payload["model_spec"]["trunk"] = "alexnet"
    torch.save(payload, tmp_path / "badspec.pt")
    with pytest.raises(DataError, match="bad model_spec"):
        load_checkpoint(tmp_path / "badspec.pt")
    with pytest.raises(DataError, match="preprocessing lacks mean"):
        save_checkpoint(tmp_path / "x.pt", model, kind="whole_image", model_spec=model.spec,
                        preprocessing={"height": 1, "width": 1, "mode": "paper"}, class_names=WHOLE_IMAGE_CLASSES)
    assert not (tmp_path / "x.pt").exists()
