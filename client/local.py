"""Local work at a site: rebuild the received model, fine-tune it, or score the validation split.

Everything here runs inside the site's `flwr-clientapp` process, on the site's GPU (AMP) when
it has one, else CPU. FedBN: the site's BatchNorm weights/statistics are kept in its state dir
and replace the global ones before training and evaluation; they are never sent.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mammo_fl.client.site import SiteInfo, load_site_images, site_subsets
from mammo_fl.common.federation import protocol as P
from mammo_fl.common.federation.round_config import FED_ID, RoundConfig
from mammo_fl.common.utils.atomic import atomic_path
from mammo_fl.common.utils.errors import ConfigError, DataError


@dataclass
class SiteData:
    train: Any
    val: Any
    cache: Any
    skipped: list[tuple[str, str]]


def prepare_data(site: SiteInfo, rc: RoundConfig) -> SiteData:
    """Manifest -> split -> cached, readable images (unreadable ones are skipped and counted)."""
    from mammo_fl.common.training.datasets import filter_readable
    from mammo_fl.common.imaging.cache import ImageCache, PreprocessSettings

    images = load_site_images(site)
    cache = ImageCache(site.state_dir / "cache", PreprocessSettings.from_dict(rc.preprocessing))
    workers = int(site.node_config.get("cache-workers", 1)) or None  # 0 = all cores
    images, skipped = filter_readable(images, cache, workers=workers)
    if images.empty:
        raise DataError(site.data_dir, f"none of the site's images could be read ({len(skipped)} skipped)")
    train, val = site_subsets(site, images, rc.val_fraction, rc.finetune.seed)
    return SiteData(train=train, val=val, cache=cache, skipped=skipped)


def build_model(rc: RoundConfig, arrays: dict[str, np.ndarray]) -> Any:
    """The exact global model from the spec the server sent, with the received weights (strict)."""
    import torch

    from mammo_fl.common.models import build_model as _build

    model = _build(rc.model_kind, rc.model_spec)
    state = model.state_dict()
    missing = sorted(set(state) - set(arrays))
    if missing:
        raise DataError(None, f"received model lacks {len(missing)} weight(s), e.g. {missing[0]!r}")
    model.load_state_dict({k: torch.from_numpy(np.array(arrays[k])) for k in state}, strict=True)
    return model


def fedbn_path(site: SiteInfo, rc: RoundConfig) -> Path:
    """The site's FedBN state for this federation; `fed-id` comes from the server, so it is checked
    again here (RoundConfig.from_record already refuses one that could leave the folder)."""
    if not FED_ID.match(rc.fed_id):
        raise ConfigError("round config: fed-id must be 1-64 letters, digits, '_' or '-'")
    return site.state_dir / "fedbn" / f"{rc.fed_id}.pt"


def apply_local_bn(site: SiteInfo, rc: RoundConfig, model: Any) -> None:
    """Overwrite the global BatchNorm entries with this site's own (if it has trained before)."""
    import torch

    path = fedbn_path(site, rc)
    if rc.fedbn and path.exists():
        local = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(local, strict=False)


def save_local_bn(site: SiteInfo, rc: RoundConfig, model: Any) -> None:
    import torch

    prefixes = P.batchnorm_prefixes(model)
    bn = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if P.is_batchnorm_key(k, prefixes)}
    path = fedbn_path(site, rc)
    with atomic_path(path) as tmp:
        torch.save(bn, tmp)


def sent_arrays(model: Any, fedbn: bool) -> dict[str, np.ndarray]:
    """Weights the site sends back: all, or (FedBN) all but BatchNorm."""
    prefixes = P.batchnorm_prefixes(model) if fedbn else []
    state = P.state_to_numpy(model.state_dict())
    return {k: v for k, v in state.items() if not P.is_batchnorm_key(k, prefixes)}


def local_train(site: SiteInfo, rc: RoundConfig, arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict]:
    """Fine-tune the received model on the site's training patients -> (weights to send, metrics)."""
    from mammo_fl.common.training.datasets import WholeImageDataset
    from mammo_fl.common.utils.device import select_device
    from mammo_fl.common.training.finetune import finetune

    t0 = time.perf_counter()
    data = prepare_data(site, rc)
    if data.train.empty:
        raise DataError(site.data_dir, "no training images after the local split")
    model = build_model(rc, arrays)
    reference = {k: v.detach().clone() for k, v in model.state_dict().items()} if rc.finetune.proximal_mu > 0 else None
    apply_local_bn(site, rc, model)
    seed = rc.finetune.seed * 1000 + rc.server_round  # a different order every round, same for a seed
    dataset = WholeImageDataset(data.train, data.cache, mean=float(rc.preprocessing.get("mean", 0.0)),
                                augment=False, seed=seed)
    cfg = dataclasses.replace(rc.finetune, seed=seed)
    device = select_device(site.node_config.get("device", rc.device))
    result = finetune(model, dataset, cfg, device, reference_state=reference)
    model.to("cpu")
    if rc.fedbn:
        save_local_bn(site, rc, model)
    out = sent_arrays(model, rc.fedbn)
    if site.fault == "nan":  # test-only: a site that diverged
        first = next(k for k, v in out.items() if np.issubdtype(v.dtype, np.floating))
        out[first] = out[first].copy()
        out[first].flat[0] = np.nan
    metrics = {
        "num-examples": int(result["num_examples"]),
        "train-loss": float(result["train_loss"]),
        "train-seconds": float(time.perf_counter() - t0),
    }
    return out, metrics


def patients_per_class(images: Any) -> tuple[int, int]:
    """(negative, positive) patients of an image table; a patient is positive if any image is."""
    per_patient = images.groupby(images["patient_id"].astype(str))["label"].max().astype(int)
    return int((per_patient == 0).sum()), int((per_patient == 1).sum())


def check_evaluable(val: Any, min_per_class: int) -> None:
    """A histogram of a handful of patients discloses each one's score and label: refuse to send it."""
    neg, pos = patients_per_class(val)
    if min(neg, pos) < min_per_class:
        from mammo_fl.client.policy import SiteRefusal

        raise SiteRefusal(P.TOO_SMALL, f"validation split has {neg} negative / {pos} positive patient(s); "
                                       f"the site sends histograms only from {min_per_class} per class")


def local_evaluate(site: SiteInfo, rc: RoundConfig, arrays: dict[str, np.ndarray], min_per_class: int = 0) -> dict:
    """Score the site's validation patients with the received model -> fixed-bin histograms only.

    Fewer than `min_per_class` validation patients in either class: no histogram (SiteRefusal)."""
    from mammo_fl.common.training.datasets import WholeImageDataset
    from mammo_fl.common.utils.device import select_device
    from mammo_fl.common.evaluation.inference import predict_scores
    from mammo_fl.common.evaluation.metrics import score_histograms

    t0 = time.perf_counter()
    data = prepare_data(site, rc)
    check_evaluable(data.val, min_per_class)
    if data.val.empty:
        raise DataError(site.data_dir, "no validation images after the local split")
    model = build_model(rc, arrays)
    apply_local_bn(site, rc, model)
    dataset = WholeImageDataset(data.val, data.cache, mean=float(rc.preprocessing.get("mean", 0.0)), augment=False)
    device = select_device(site.node_config.get("device", rc.device))
    scores = predict_scores(model, dataset, device, tta=rc.tta, batch_size=max(rc.finetune.batch_size, 4))
    labels = data.val["label"].astype(int).to_numpy()
    neg, pos = score_histograms(labels, np.clip(scores, 0.0, 1.0), bins=rc.hist_bins)
    return {
        "num-examples": int(len(labels)),
        "num-pos": int(labels.sum()),
        "hist-neg": [int(x) for x in neg],
        "hist-pos": [int(x) for x in pos],
        "eval-seconds": float(time.perf_counter() - t0),
    }
