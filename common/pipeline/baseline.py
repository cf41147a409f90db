"""The two-step baseline of Shen et al. 2019: patch heatmap -> regional features -> random forest.

Step 1 scans the whole image with the patch classifier (softmax heatmap, 5 classes). Step 2
binarises each lesion-class map (and the summed malignant map) at 0.3 / 0.5 / 0.7 / 0.9, measures
regional features (count, area, major axis length, mean and max probability of the largest
region), and trains a random forest (paper: 500 trees, max depth 9, min samples split 300).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.ensemble import RandomForestClassifier
from tqdm import tqdm

from mammo_fl.common.utils.device import autocast
from mammo_fl.common.utils.errors import ConfigError

CUTOFFS: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9)
REGION_FEATURES = ("n_regions", "area_frac", "largest_area_frac", "largest_major_axis", "largest_mean", "largest_max")


@dataclass(frozen=True)
class BaselineSettings:
    cutoffs: tuple[float, ...] = CUTOFFS
    n_estimators: int = 500
    max_depth: int = 9
    # int = samples (paper: 300 of 1,903 images); float in (0, 1] = fraction of the training set,
    # which keeps the paper's regularisation on small CPU datasets (300 > a whole CPU training set).
    min_samples_split: int | float = 300
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.cutoffs or any(not 0.0 < c < 1.0 for c in self.cutoffs):
            raise ConfigError(f"baseline.cutoffs must be in (0, 1), got {self.cutoffs}")
        if isinstance(self.min_samples_split, float) and not 0.0 < self.min_samples_split <= 1.0:
            raise ConfigError("baseline.min_samples_split as a fraction must be in (0, 1]")


def _feature_maps(heatmap: np.ndarray) -> list[np.ndarray]:
    """Lesion-class maps (classes 1..C-1) plus the summed malignant map (classes 2 and 4)."""
    maps = [heatmap[c] for c in range(1, heatmap.shape[0])]
    if heatmap.shape[0] == 5:
        maps.append(heatmap[2] + heatmap[4])
    return maps


def region_features(prob: np.ndarray, cutoff: float) -> list[float]:
    """Regional features of one probability map binarised at `cutoff`."""
    binary = prob >= cutoff
    labels, n = ndimage.label(binary)
    total = float(prob.size)
    if n == 0:
        return [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    areas = ndimage.sum_labels(binary, labels, index=np.arange(1, n + 1))
    largest = int(np.argmax(areas)) + 1
    rows, cols = np.nonzero(labels == largest)
    if rows.size > 1:
        eig = np.linalg.eigvalsh(np.cov(np.stack([rows, cols]).astype(np.float64)))
        major = 4.0 * float(np.sqrt(max(eig[-1], 0.0)))
    else:
        major = 1.0
    values = prob[rows, cols]
    diag = float(np.hypot(*prob.shape))
    return [float(n), float(areas.sum()) / total, float(areas.max()) / total, major / diag,
            float(values.mean()), float(values.max())]


def heatmap_features(heatmap: np.ndarray, cutoffs: Sequence[float] = CUTOFFS) -> np.ndarray:
    """Feature vector of one (C, h, w) softmax heatmap: regional features at every cutoff + global stats."""
    if heatmap.ndim != 3 or heatmap.shape[0] < 2:
        raise ValueError(f"heatmap must be (classes, h, w), got {heatmap.shape}")
    feats: list[float] = []
    for prob in _feature_maps(heatmap):
        feats += [float(prob.max()), float(prob.mean())]
        for cutoff in cutoffs:
            feats += region_features(prob, cutoff)
    return np.asarray(feats, dtype=np.float32)


@torch.no_grad()
def patch_heatmap(trunk: torch.nn.Module, head: torch.nn.Linear, images: torch.Tensor, window: int) -> torch.Tensor:
    """Scan whole images with a GAP+FC patch classifier: (N, C, h, w) softmax heatmaps.

    The trunk's feature map is average-pooled over `window` cells (a patch's footprint at the
    trunk's stride), then the patch classifier's dense layer is applied at every location — the
    same computation as classifying every patch on a stride-sized grid.
    """
    features = trunk(images)
    k = max(1, min(window, features.shape[-2], features.shape[-1]))
    pooled = F.avg_pool2d(features, kernel_size=k, stride=1)
    logits = torch.einsum("nchw,kc->nkhw", pooled.float(), head.weight.float()) + head.bias.float()[None, :, None, None]
    return logits.softmax(dim=1)


def dataset_heatmaps(
    trunk: torch.nn.Module,
    head: torch.nn.Linear,
    dataset: torch.utils.data.Dataset,
    window: int,
    device: torch.device,
    batch_size: int = 8,
    progress: bool = False,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Heatmaps and labels of every item of a WholeImageDataset-like dataset (image, label)."""
    trunk = trunk.to(device).eval()
    head = head.to(device).eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    maps: list[np.ndarray] = []
    labels: list[int] = []
    for x, y in tqdm(loader, desc="heatmaps", disable=not progress):
        with autocast(device):
            hm = patch_heatmap(trunk, head, x.to(device), window)
        maps += list(hm.float().cpu().numpy())
        labels += [int(v) for v in y]
    return maps, np.asarray(labels, dtype=np.int64)


class TwoStepBaseline:
    """Random forest on heatmap regional features."""

    def __init__(self, settings: BaselineSettings | None = None) -> None:
        self.settings = settings or BaselineSettings()
        s = self.settings
        self.forest = RandomForestClassifier(
            n_estimators=s.n_estimators,
            max_depth=s.max_depth,
            min_samples_split=s.min_samples_split,
            random_state=s.seed,
            n_jobs=1,
        )

    def features(self, heatmaps: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([heatmap_features(h, self.settings.cutoffs) for h in heatmaps])

    def fit(self, heatmaps: Sequence[np.ndarray], labels: np.ndarray) -> TwoStepBaseline:
        labels = np.asarray(labels)
        if len(np.unique(labels)) < 2:
            raise ConfigError("the baseline needs both classes in its training images")
        self.forest.fit(self.features(heatmaps), labels)
        return self

    def predict(self, heatmaps: Sequence[np.ndarray]) -> np.ndarray:
        """Malignant probability per heatmap."""
        proba = self.forest.predict_proba(self.features(heatmaps))
        return proba[:, list(self.forest.classes_).index(1)]
