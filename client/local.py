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

from mammo_fl.client.faults import apply_update_fault, claimed_examples, parse_fault
from mammo_fl.client.site import SiteInfo, load_site_images, site_subsets
from mammo_fl.client.site_privacy import noise_histograms, protect_update
from mammo_fl.common.federation import protocol as P
from mammo_fl.common.federation.round_config import RoundConfig
from mammo_fl.common.utils.errors import DataError


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(bn, tmp)
    tmp.replace(path)


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
    out = protect_update(sent_arrays(model, rc.fedbn), arrays, rc)  # DP clip (+ noise) as asked (issue 12)
    fault = parse_fault(site.fault)  # test-only: nan | scale:F | claim-examples:N act on what leaves
    out = apply_update_fault(fault, out, arrays)
    metrics = {
        "num-examples": claimed_examples(fault, int(result["num_examples"])),
        "train-loss": float(result["train_loss"]),
        "train-seconds": float(time.perf_counter() - t0),
    }
    return out, metrics


def local_evaluate(site: SiteInfo, rc: RoundConfig, arrays: dict[str, np.ndarray]) -> dict:
    """Score the site's validation patients with the received model -> fixed-bin histograms only."""
    from mammo_fl.common.training.datasets import WholeImageDataset
    from mammo_fl.common.utils.device import select_device
    from mammo_fl.common.evaluation.inference import predict_scores
    from mammo_fl.common.evaluation.metrics import score_histograms

    t0 = time.perf_counter()
    data = prepare_data(site, rc)
    if data.val.empty:
        raise DataError(site.data_dir, "no validation images after the local split")
    model = build_model(rc, arrays)
    apply_local_bn(site, rc, model)
    dataset = WholeImageDataset(data.val, data.cache, mean=float(rc.preprocessing.get("mean", 0.0)), augment=False)
    device = select_device(site.node_config.get("device", rc.device))
    scores = predict_scores(model, dataset, device, tta=rc.tta, batch_size=max(rc.finetune.batch_size, 4))
    labels = data.val["label"].astype(int).to_numpy()
    neg, pos = score_histograms(labels, np.clip(scores, 0.0, 1.0), bins=rc.hist_bins)
    neg, pos = noise_histograms(neg, pos, rc.dp_histogram_noise)  # DP; totals below follow the noised counts
    return {
        "num-examples": int(neg.sum() + pos.sum()),
        "num-pos": int(pos.sum()),
        "hist-neg": [int(x) for x in neg],
        "hist-pos": [int(x) for x in pos],
        "eval-seconds": float(time.perf_counter() - t0),
    }
