"""Malignancy heatmaps of whole mammograms, two ways.

- ``patch`` (the paper's heatmaps, Fig. 1): the 5-class patch classifier slid over the whole image
  (`baseline.patch_heatmap`), map = P(calcification malignant) + P(mass malignant), in [0, 1].
- ``cam``: the whole-image model's own class activation map (Zhou et al. 2016). Its head is global
  average pooling + a dense layer, so the malignant-vs-not logit is exactly the mean over cells of the
  evidence ``(w1 - w0) . features + (b1 - b0)``. The per-cell terms are large (tens of logits), so a
  per-cell probability would be saturated everywhere; the map is the evidence min-max scaled over the
  image, as CAMs are displayed: it shows *where* the model's evidence lies, the probability printed on
  the overlay says how much. It needs no patch net, so it works for a model that came back from the
  federation (`final.pt`).

Both return the whole-image model's malignant probability and a cell map with its `CellGrid`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from mammo_fl.common.models.checkpoint import LoadedCheckpoint, load_checkpoint
from mammo_fl.common.pipeline.baseline import patch_heatmap
from mammo_fl.common.pipeline.cell_grid import CellGrid, probe_cell_grid
from mammo_fl.common.utils.device import autocast
from mammo_fl.common.utils.errors import ConfigError, DataError

METHODS = ("patch", "cam")
MALIGNANT_PATCH_CLASSES = ("calc_malignant", "mass_malignant")
PATCH_MODEL_NAME = "patch_model.pt"  # written beside whole_image.pt by `mammo-train run`


@dataclass
class HeatmapBatch:
    probs: np.ndarray  # (N,) the whole-image model's malignant probability
    maps: np.ndarray  # (N, h, w) malignant evidence in [0, 1]
    grid: CellGrid  # where the map's cells sit on the model image


class Explainer(Protocol):
    method: str

    def __call__(self, x: torch.Tensor) -> HeatmapBatch: ...


def _malignant_prob(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy().astype(np.float64)


class PatchExplainer:
    """The patch classifier's malignant map; the probability comes from the whole-image model."""

    method = "patch"

    def __init__(self, whole: LoadedCheckpoint, patch: LoadedCheckpoint, device: torch.device) -> None:
        self.device = device
        self.whole = whole.model.to(device).eval()
        self.trunk = patch.model.trunk.to(device).eval()
        self.fc = patch.model.fc.to(device).eval()
        self.classes = [patch.class_names.index(c) for c in MALIGNANT_PATCH_CLASSES]
        # each net gets the input scale it was trained on (a federated whole model may have moved its mean)
        self.shift = float(whole.preprocessing["mean"]) - float(patch.preprocessing["mean"])
        self.trunk_grid = probe_cell_grid(self.trunk)
        self.window = max(1, round(int(patch.preprocessing["height"]) / self.trunk_grid.scale[0]))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> HeatmapBatch:
        x = x.to(self.device)
        with autocast(self.device):
            probs = _malignant_prob(self.whole(x))
            heat = patch_heatmap(self.trunk, self.fc, x + self.shift, self.window)
        maps = heat.float()[:, self.classes].sum(dim=1).clamp(0.0, 1.0).cpu().numpy()
        feat_h, feat_w = maps.shape[-2] + self.window - 1, maps.shape[-1] + self.window - 1
        window = (min(self.window, feat_h), min(self.window, feat_w))  # patch_heatmap clamps it the same way
        return HeatmapBatch(probs, maps, self.trunk_grid.pooled(window))


class CamExplainer:
    """Class activation map of a whole-image model with a global-average-pooling head."""

    method = "cam"

    def __init__(self, whole: LoadedCheckpoint, device: torch.device, source: str = "checkpoint") -> None:
        head = whole.model.head
        if isinstance(head.pool, nn.Identity) or head.fc.out_features != 2:
            raise ConfigError(f"{source}: --method cam needs a whole-image model with a global-average-pooling "
                              f"head and 2 classes (top {whole.model_spec.get('top', {}).get('type')!r} has none); "
                              "use --method patch")
        self.device = device
        self.features = nn.Sequential(whole.model.trunk, whole.model.top).to(device).eval()
        self.head = head.to(device).eval()
        self.grid = probe_cell_grid(self.features)

    def evidence(self, features: torch.Tensor) -> torch.Tensor:
        """(N, h, w) per-cell malignant-vs-not logit terms; their mean over cells is the model's logit."""
        weight, bias = self.head.fc.weight.float(), self.head.fc.bias.float()
        return torch.einsum("nchw,c->nhw", features.float(), weight[1] - weight[0]) + (bias[1] - bias[0])

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> HeatmapBatch:
        with autocast(self.device):
            features = self.features(x.to(self.device))
            probs = _malignant_prob(self.head(features))
        evidence = self.evidence(features)
        low = evidence.amin(dim=(1, 2), keepdim=True)
        span = (evidence.amax(dim=(1, 2), keepdim=True) - low).clamp_min(1e-12)
        return HeatmapBatch(probs, ((evidence - low) / span).cpu().numpy(), self.grid)


def patch_model_path(model_path: Path, patch_model: Path | None) -> Path:
    """`--patch-model`, else the `patch_model.pt` beside the whole-image checkpoint."""
    path = Path(patch_model) if patch_model else Path(model_path).with_name(PATCH_MODEL_NAME)
    if not path.is_file():
        raise DataError(path, "no patch classifier checkpoint: --method patch needs the patch net "
                        "(give --patch-model PATCH_CKPT); a federated model has none: use --method cam")
    return path


def load_patch_net(path: Path, device: torch.device) -> LoadedCheckpoint:
    patch = load_checkpoint(path, device)
    if patch.kind != "patch":
        raise DataError(path, f"--method patch needs a patch classifier checkpoint, got a {patch.kind!r} one "
                        "(a whole-image or federated model has no patch net: use --method cam)")
    missing = [c for c in MALIGNANT_PATCH_CLASSES if c not in patch.class_names]
    if missing:
        raise DataError(path, f"patch classifier has no {', '.join(missing)} class (classes {patch.class_names})")
    return patch


def make_explainer(method: str, whole: LoadedCheckpoint, model_path: Path, patch_model: Path | None,
                   device: torch.device) -> Explainer:
    if method not in METHODS:
        raise ConfigError(f"unknown heatmap method {method!r}; choose {' or '.join(METHODS)}")
    if whole.kind != "whole_image":
        raise DataError(model_path, f"expected a whole-image checkpoint, got {whole.kind!r}")
    if method == "cam":
        return CamExplainer(whole, device, str(model_path))
    patch = load_patch_net(patch_model_path(model_path, patch_model), device)
    return PatchExplainer(whole, patch, device)
