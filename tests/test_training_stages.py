"""Staged training: which parameters each stage changes, model selection, exact resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from model_fixtures import one_torch_thread  # noqa: F401 (autouse fixture: MAMMO_TEST_THREADS threads)
from torch.utils.data import TensorDataset

from mammo_fl.common.models.checkpoint import load_checkpoint
from mammo_fl.common.utils.errors import ConfigError, DataError
from mammo_fl.common.models import build_model, convert_patch_to_whole
from mammo_fl.common.training.patch import patch_accuracy, patch_stages, train_patch_classifier
from mammo_fl.common.training.staged import Stage, TrainState, train_staged
from mammo_fl.common.training.whole import train_whole_classifier, whole_stages

CPU = torch.device("cpu")


class Labelled(TensorDataset):
    """Real tensors with the `labels()` accessor the validation metrics use."""

    def labels(self) -> np.ndarray:
        return self.tensors[1].numpy()


def patch_data(n: int = 40, size: int = 32, seed: int = 0) -> Labelled:
    """Class k = a bright square at a class-specific place (learnable in a few steps)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g) * 5
    y = torch.arange(n) % 5
    for i in range(n):
        k = int(y[i])
        if k:
            r, c = (k - 1) // 2 * (size // 2), (k - 1) % 2 * (size // 2)
            x[i, :, r : r + size // 2, c : c + size // 2] += 60
    return Labelled(x, y)


def whole_data(n: int = 12, h: int = 64, w: int = 64, seed: int = 0) -> Labelled:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, h, w, generator=g) * 5
    y = torch.arange(n) % 2
    x[y == 1, :, h // 4 : h // 2, w // 4 : w // 2] += 50
    return Labelled(x, y)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict, model: torch.nn.Module) -> set[str]:
    after = model.state_dict()
    return {k for k in before if before[k].dtype.is_floating_point and not torch.equal(before[k], after[k])}


def one_stage(model, trainable: str, data) -> None:
    train_staged(model, data, [Stage(trainable, 1, 1e-2)], lambda m: float("nan"), CPU, batch_size=8, augment=False)


def test_patch_stages_freeze_the_right_parameters() -> None:
    torch.manual_seed(0)
    model = build_model("patch", {"arch": "resnet_tiny"})
    data = patch_data()
    before = snapshot(model)
    one_stage(model, "head", data)
    diff = changed(before, model)
    assert diff == {"fc.weight", "fc.bias"}  # frozen BN running stats did not move either

    before = snapshot(model)
    one_stage(model, "top", data)  # resnet_tiny: layer4 + head
    diff = changed(before, model)
    assert {"fc.weight", "trunk.layer4.0.conv1.weight", "trunk.layer4.0.bn1.running_mean"} <= diff
    assert not any(k.startswith(("trunk.conv1", "trunk.bn1", "trunk.layer1", "trunk.layer2", "trunk.layer3"))
                   for k in diff)

    before = snapshot(model)
    one_stage(model, "all", data)
    diff = changed(before, model)
    assert {"trunk.conv1.weight", "trunk.layer1.0.conv1.weight", "fc.weight"} <= diff
    assert all(p.requires_grad for p in model.parameters())  # unfrozen after training


def test_whole_stage1_trains_top_only_and_keeps_trunk() -> None:
    torch.manual_seed(0)
    patch = build_model("patch", {"arch": "resnet_tiny"})
    whole = convert_patch_to_whole(patch, {"type": "resnet", "blocks": [[8, 8, 16, 1], [8, 8, 16, 1]]})
    before = snapshot(whole)
    one_stage(whole, "top", whole_data())
    diff = changed(before, whole)
    assert not any(k.startswith("trunk.") for k in diff)
    assert any(k.startswith("top.") for k in diff) and "head.fc.weight" in diff
    for k, v in patch.trunk.state_dict().items():
        assert torch.equal(whole.trunk.state_dict()[k], v)


def test_model_selection_restores_best_epoch() -> None:
    torch.manual_seed(0)
    model = build_model("patch", {"arch": "resnet_tiny"})
    metrics = iter([0.2, 0.9, 0.4])
    seen: list[dict] = []
    result = train_staged(model, patch_data(), [Stage("head", 1, 1e-2), Stage("all", 2, 1e-3)],
                          lambda m: next(metrics), CPU, batch_size=8,
                          on_epoch=lambda m, st, imp: seen.append(snapshot(m)))
    assert result.best_epoch == 1 and result.best_metric == 0.9 and result.finished
    assert [h["stage"] for h in result.history] == [1, 2, 2]
    for k, v in seen[1].items():
        assert torch.equal(model.state_dict()[k], v)
    assert not torch.equal(seen[2]["fc.weight"], seen[1]["fc.weight"])


def test_patch_training_learns_and_reports_accuracy() -> None:
    torch.manual_seed(0)
    model = build_model("patch", {"arch": "resnet_tiny"})
    stages = patch_stages({"stage1": {"epochs": 1, "lr": 1e-2}, "stage2": {"epochs": 1, "lr": 1e-2},
                           "stage3": {"epochs": 3, "lr": 3e-3}})
    assert [s.trainable for s in stages] == ["head", "top", "all"]
    result = train_patch_classifier(model, patch_data(80), patch_data(40, seed=1), stages, CPU, batch_size=16,
                                    augment=False)
    assert result.best_metric == pytest.approx(patch_accuracy(model, patch_data(40, seed=1), CPU))
    assert result.best_metric > 0.5  # chance is 0.2


def test_cosine_stage_decays_lr_per_epoch_and_training_uses_it() -> None:
    stage = patch_stages({"stage1": {"epochs": 1, "lr": 1e-2}, "stage2": {"epochs": 1, "lr": 1e-2},
                          "stage3": {"epochs": 3, "lr": 1e-3, "lr_final": 1e-5}})[2]
    assert [stage.lr_at(e) for e in range(3)] == pytest.approx([1e-3, (1e-3 + 1e-5) / 2, 1e-5])
    assert Stage("all", 3, 1e-3).lr_at(2) == 1e-3  # no lr_final: constant
    torch.manual_seed(0)
    model = build_model("patch", {"arch": "resnet_tiny"})
    result = train_staged(model, patch_data(), [stage], lambda m: 0.5, CPU, batch_size=8, augment=False)
    assert [h["lr"] for h in result.history] == pytest.approx([1e-3, 5.05e-4, 1e-5])
    with pytest.raises(ConfigError):
        Stage("all", 2, 1e-4, lr_final=1e-3)  # decay only


def test_stage_config_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        patch_stages({"stage1": {"epochs": 1, "lr": 1e-3}, "stage2": {"epochs": 1, "lr": 1e-3}})
    with pytest.raises(ConfigError):
        whole_stages({"stage1": {"epochs": 1, "lr": 1e-3, "momentum": 0.9}, "stage2": {"epochs": 1, "lr": 1e-3}})
    with pytest.raises(ConfigError):
        Stage("all", 1, 0.0)


def _whole_model(seed: int = 0):
    torch.manual_seed(seed)
    return convert_patch_to_whole(build_model("patch", {"arch": "resnet_tiny"}),
                                  {"type": "resnet", "blocks": [[8, 8, 16, 1], [8, 8, 16, 1]]})


def test_whole_training_resumes_exactly(tmp_path) -> None:
    stages = whole_stages({"stage1": {"epochs": 1, "lr": 1e-3, "weight_decay": 1e-3},
                           "stage2": {"epochs": 2, "lr": 1e-4, "weight_decay": 1e-2}})
    prep = {"height": 64, "width": 64, "mode": "paper", "mean": 0.0}
    train, val = whole_data(12), whole_data(8, seed=5)
    kw = dict(preprocessing=prep, batch_size=4, augment=True)

    full = _whole_model()
    r_full = train_whole_classifier(full, train, val, stages, CPU, best_path=tmp_path / "a/best.pt",
                                    state_path=tmp_path / "a/state.pt", **kw)
    assert r_full.finished and len(r_full.history) == 3

    part = _whole_model()
    r1 = train_whole_classifier(part, train, val, stages, CPU, best_path=tmp_path / "b/best.pt",
                                state_path=tmp_path / "b/state.pt", max_epochs=2, **kw)
    assert not r1.finished and len(r1.history) == 2
    fresh = _whole_model(seed=123)  # a new process: different init, everything comes from the files
    r2 = train_whole_classifier(fresh, train, val, stages, CPU, best_path=tmp_path / "b/best.pt",
                                state_path=tmp_path / "b/state.pt", **kw)
    assert r2.finished and [h["train_loss"] for h in r2.history] == [h["train_loss"] for h in r_full.history]
    for k, v in full.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    best = load_checkpoint(tmp_path / "a/best.pt")
    assert best.metrics["val_auc"] == r_full.best_metric and best.class_names == ["not_malignant", "malignant"]
    assert best.preprocessing == prep and not math.isnan(r_full.best_metric)
    for k, v in best.model.state_dict().items():
        assert torch.equal(full.state_dict()[k], v)


def test_resume_refuses_a_state_of_another_model(tmp_path) -> None:
    stages = whole_stages({"stage1": {"epochs": 1, "lr": 1e-3}, "stage2": {"epochs": 0, "lr": 1e-4}})
    prep = {"height": 64, "width": 64, "mode": "paper", "mean": 0.0}
    train_whole_classifier(_whole_model(), whole_data(), None, stages, CPU, preprocessing=prep,
                           best_path=tmp_path / "best.pt", state_path=tmp_path / "state.pt", batch_size=4)
    other = convert_patch_to_whole(build_model("patch", {"arch": "resnet_tiny"}),
                                   {"type": "vgg", "blocks": [[8, 1], [8, 1]]})
    with pytest.raises(DataError, match="another model"):
        train_whole_classifier(other, whole_data(), None, stages, CPU, preprocessing=prep,
                               best_path=tmp_path / "best.pt", state_path=tmp_path / "state.pt", batch_size=4)


def test_state_roundtrip() -> None:
    st = TrainState(stage_index=1, epoch_in_stage=2, global_epoch=5, best_metric=0.7, best_epoch=3,
                    history=[{"epoch": 1}])
    assert TrainState.from_dict(st.to_dict()) == st
