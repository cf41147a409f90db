"""Is the lesion signal real and not trivial? Features for the two sides of that question.

- `image_statistics`: whole-image intensity/histogram features. A classifier on these
  should NOT separate malignant from other images (no brightness or global cue).
- `roi_features`: outline shape and in-ROI texture. These SHOULD separate benign from
  malignant lesions (malignancy is a property of lesion morphology).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from mammo_fl.common.synth.acquisition import Acquired


def display_pixels(acquired: Acquired) -> np.ndarray:
    """Stored values -> [0, 1] with dense tissue bright (VOI window, MONOCHROME1 inversion)."""
    x = acquired.pixels.astype(np.float32)
    if acquired.window is not None:
        c, w = acquired.window
        x = np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)
    else:
        x = x / float(2**acquired.bits_stored - 1)
    return 1.0 - x if acquired.photometric == "MONOCHROME1" else x


def image_statistics(pixels: np.ndarray, bins: int = 16) -> np.ndarray:
    """Mean, std, percentiles and a normalised histogram of the whole image."""
    flat = pixels.ravel()
    hist = np.histogram(flat, bins=bins, range=(0.0, 1.0))[0] / flat.size
    pct = np.percentile(flat, [5, 25, 50, 75, 95, 99])
    return np.concatenate([[flat.mean(), flat.std()], pct, hist]).astype(np.float64)


ROI_FEATURE_NAMES = ("solidity", "circularity", "speck_count", "speck_mean_area", "bright_fraction", "edge_energy")


def _solidity(mask: np.ndarray) -> float:
    ys, xs = np.nonzero(mask)
    if len(xs) < 4:
        return 1.0
    try:
        hull = ConvexHull(np.stack([xs, ys], axis=1).astype(float))
    except QhullError:
        return 1.0
    return float(len(xs) / max(hull.volume + 0.5 * hull.area, 1.0))  # pixel-area corrected hull


def roi_features(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shape of the ROI mask + texture of the image inside it (specks, edges)."""
    area = float(mask.sum())
    if area == 0:
        return np.zeros(len(ROI_FEATURE_NAMES))
    perimeter = float((mask & ~ndimage.binary_erosion(mask)).sum())
    circularity = 4 * np.pi * area / max(perimeter, 1.0) ** 2
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = pixels[y0:y1, x0:x1].astype(np.float32)
    inside = mask[y0:y1, x0:x1]
    # Specks: small bright blobs above the local background (white top-hat).
    tophat = crop - ndimage.grey_opening(crop, size=(5, 5))
    thr = max(float(np.percentile(tophat[inside], 50)) + 3.0 * float(tophat[inside].std()), 1e-3)
    labels, n = ndimage.label((tophat > thr) & inside)
    mean_area = float(np.bincount(labels.ravel())[1:].mean()) if n else 0.0
    bright = float(((crop > np.percentile(crop[inside], 90) * 0.98) & inside).sum() / area)
    edge = float(np.abs(ndimage.laplace(crop))[inside].mean())
    return np.array([_solidity(mask), circularity, n / np.sqrt(area), mean_area, bright, edge], dtype=np.float64)


@dataclass
class SignalReport:
    image_stat_auc: float  # cross-validated AUC of image statistics for the image label (want <= ~0.65)
    roi_auc: float  # cross-validated AUC of ROI features for benign vs malignant (want >= 0.85)
    n_images: int
    n_rois: int


def cross_validated_auc(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, seed: int = 0) -> float:
    """Logistic regression (standardised features), patient-grouped 5-fold CV, pooled AUC."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scores = np.zeros(len(labels))
    folds = GroupKFold(n_splits=5)
    for train, test in folds.split(features, labels, groups):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        model.fit(features[train], labels[train])
        scores[test] = model.predict_proba(features[test])[:, 1]
    return float(roc_auc_score(labels, scores))


def lesion_signal_report(rendered_images: list, seed: int = 0) -> SignalReport:
    """Both AUCs over a list of `RenderedImage`s (one vendor keeps the comparison honest)."""
    img_x, img_y, img_g, roi_x, roi_y, roi_g = [], [], [], [], [], []
    for r in rendered_images:
        px = display_pixels(r.acquired)
        img_x.append(image_statistics(px))
        img_y.append(r.spec.label)
        img_g.append(r.spec.patient_id)
        for roi in r.rois:
            roi_x.append(roi_features(px, roi.mask))
            roi_y.append(int(roi.spec.malignant))
            roi_g.append(r.spec.patient_id)
    image_auc = cross_validated_auc(np.array(img_x), np.array(img_y), np.array(img_g), seed)
    roi_auc = cross_validated_auc(np.array(roi_x), np.array(roi_y), np.array(roi_g), seed)
    return SignalReport(image_auc, roi_auc, len(img_y), len(roi_y))
