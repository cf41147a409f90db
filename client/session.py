"""A site between messages: its prepared data, its model, and the global model it holds.

One round = one message: reconstruct the global model from what arrived (full weights, a delta
against the global model the site holds, or "same"), score it on the validation split when asked
(before training: that is round r-1's model, so no second message is needed), fine-tune it, and
send back the delta of the arrays that training can change.

A SiteSession lives in the site worker (deployment: client/worker.py, one process for the whole
federation, so torch, the preloaded images and the built model stay warm) or in the ClientApp
process itself (simulation: Ray actors are long-lived; client/app.py keeps a few sessions). The
held global model is also kept on disk (STATE/held/), so a restarted worker still takes deltas.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mammo_fl.client.faults import apply_update_fault, claimed_examples, parse_fault
from mammo_fl.client.local import (apply_local_bn, check_evaluable, drop_other_federations, load_local_optimizer,
                                   patients_per_class, save_local_bn, save_local_optimizer)
from mammo_fl.client.policy import SiteRefusal
from mammo_fl.client.site import SiteInfo, load_site_images, site_subsets
from mammo_fl.client.site_privacy import noise_histograms, pack_within_norm, protect_update, wire_clip_norm
from mammo_fl.common.federation import protocol as P
from mammo_fl.common.federation import wire as W
from mammo_fl.common.federation.round_config import RoundConfig
from mammo_fl.common.utils.atomic import atomic_path, atomic_write_text
from mammo_fl.common.utils.errors import DataError

HELD_DIR = "held"


@dataclass
class WorkResult:
    """What one message produced at the site."""

    status: str = P.STATUS_OK  # ok | need-full
    eval_metrics: dict[str, Any] | None = None
    train_metrics: dict[str, Any] | None = None
    update: W.Packed | None = None
    held: str = ""  # digest of the global model the site now holds
    timings: dict[str, float] = field(default_factory=dict)
    eval_refused: SiteRefusal | None = None  # asked to evaluate, but too small to send a histogram


@dataclass
class _Data:
    key: str
    train: Any  # WholeImageDataset (preloaded when small)
    val: Any
    val_labels: np.ndarray
    val_patients: tuple[int, int]  # (negative, positive) validation patients
    prep_seconds: float


class SiteSession:
    def __init__(self, site: SiteInfo) -> None:
        self.site = site
        self._data: _Data | None = None
        self._model: Any = None
        self._model_key = ""
        self._bn_prefixes: list[str] = []
        self._specs: dict[str, tuple[tuple[int, ...], str]] = {}
        self.held: dict[str, np.ndarray] | None = None
        self.held_digest = ""
        self.held_fed = ""
        self._dirty = False  # held model not yet on disk
        self._prep_pending = 0.0  # data preparation time not yet reported

    # --- what the site holds -------------------------------------------------------------------
    def _held_path(self, fed_id: str) -> Path:
        return self.site.state_dir / HELD_DIR / f"{fed_id}.npz"

    def _load_held(self, fed_id: str) -> None:
        """The held global model from disk (a restarted worker, another simulation actor)."""
        path = self._held_path(fed_id)
        if not path.exists():
            return
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            digest = json.loads(path.with_suffix(".json").read_text())["digest"]
        except (OSError, ValueError, KeyError):
            return
        if W.arrays_digest(arrays) == digest:
            self.held, self.held_digest, self.held_fed = arrays, digest, fed_id

    def persist(self) -> None:
        """Write the held global model (atomically) if it changed since the last write."""
        if not self._dirty or self.held is None:
            return
        path = self._held_path(self.held_fed)
        path.parent.mkdir(parents=True, exist_ok=True)
        drop_other_federations(path)  # one federation's model at a time
        with atomic_path(path) as tmp:
            np.savez(tmp, **self.held)
        atomic_write_text(path.with_suffix(".json"), json.dumps({"digest": self.held_digest}))
        self._dirty = False

    def receive(self, rc: RoundConfig, packed: W.Packed, base: str, target: str) -> bool:
        """Reconstruct the global model the server sent; False when a delta's base is not held here."""
        self.model(rc)
        all_keys = list(self._specs)
        if packed.mode == W.FULL:
            arrays = W.unpack(packed, W.Layout.of_specs(self._specs, all_keys))
        else:
            if self.held_digest != base or self.held_fed != rc.fed_id:
                self._load_held(rc.fed_id)
            if self.held is None or self.held_digest != base or self.held_fed != rc.fed_id:
                return False
            layout = W.Layout.of(self.held, self.exchanged(rc, all_keys))
            arrays = {**self.held, **W.unpack(packed, layout, self.held)}
        digest = arrays_digest_or_same(arrays, packed, self.held_digest)
        if digest != target:
            raise W.WireError("the reconstructed global model does not match the coordinator's digest")
        if packed.mode != W.SAME:
            self.held, self.held_digest, self.held_fed, self._dirty = arrays, digest, rc.fed_id, True
        return True

    # --- data and model ------------------------------------------------------------------------
    def data(self, rc: RoundConfig) -> _Data:
        """Manifest -> split -> cached, readable images, preloaded into RAM once per worker."""
        from mammo_fl.common.imaging.cache import ImageCache, PreprocessSettings, filter_readable
        from mammo_fl.common.training.datasets import WholeImageDataset, preload_if_small

        key = json.dumps([rc.preprocessing, rc.val_fraction, rc.finetune.seed], sort_keys=True)
        if self._data is not None and self._data.key == key:
            return self._data
        t0 = time.perf_counter()
        images = load_site_images(self.site)
        cache = ImageCache(self.site.state_dir / "cache", PreprocessSettings.from_dict(rc.preprocessing))
        workers = int(self.site.node_config.get("cache-workers", 1)) or None  # 0 = all cores
        images, skipped = filter_readable(images, cache, workers=workers)
        if images.empty:
            raise DataError(self.site.data_dir, f"none of the site's images could be read ({len(skipped)} skipped)")
        train, val = site_subsets(self.site, images, rc.val_fraction, rc.finetune.seed)
        mean = float(rc.preprocessing.get("mean", 0.0))
        train_ds = WholeImageDataset(train, cache, mean=mean, augment=False)
        val_ds = WholeImageDataset(val, cache, mean=mean, augment=False)
        for ds in (train_ds, val_ds):
            preload_if_small(ds, rc.finetune.preload_max_mb)
        prep = time.perf_counter() - t0
        self._data = _Data(key, train_ds, val_ds, val["label"].astype(int).to_numpy(), patients_per_class(val), prep)
        self._prep_pending += prep
        return self._data

    def model(self, rc: RoundConfig) -> Any:
        """The model of the spec the server sent, built once (weights are loaded per message)."""
        from mammo_fl.common.models import build_model

        key = json.dumps([rc.model_kind, rc.model_spec], sort_keys=True)
        if self._model is None or self._model_key != key:
            self._model = build_model(rc.model_kind, rc.model_spec)
            self._model_key = key
            self._bn_prefixes = P.batchnorm_prefixes(self._model)
            self._specs = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch."))
                           for k, v in self._model.state_dict().items()}
            self.held, self.held_digest, self._dirty = None, "", False
        return self._model

    def exchanged(self, rc: RoundConfig, keys: list[str]) -> list[str]:
        return P.exchanged_keys(keys, self._bn_prefixes, rc.train_layers, rc.fedbn)

    def _load_global(self, rc: RoundConfig) -> Any:
        """The model with the held global weights and (FedBN) this site's own BatchNorm."""
        import torch

        model = self.model(rc)
        assert self.held is not None
        model.load_state_dict({k: torch.from_numpy(v) for k, v in self.held.items()}, strict=True)
        apply_local_bn(self.site, rc, model)
        return model

    # --- the work ------------------------------------------------------------------------------
    def evaluate(self, rc: RoundConfig, min_per_class: int = 0) -> dict[str, Any]:
        """Score the held global model on the validation patients -> fixed-bin histograms only.

        Fewer than `min_per_class` validation patients in either class: no histogram (SiteRefusal)."""
        from mammo_fl.common.evaluation.inference import predict_scores
        from mammo_fl.common.evaluation.metrics import score_histograms
        from mammo_fl.common.utils.device import select_device

        data = self.data(rc)
        check_evaluable(data.val_patients, min_per_class)
        if len(data.val) == 0:
            raise DataError(self.site.data_dir, "no validation images after the local split")
        t0 = time.perf_counter()
        model = self._load_global(rc)
        device = select_device(self.site.node_config.get("device", rc.device))
        scores = predict_scores(model, data.val, device, tta=rc.tta, batch_size=max(rc.finetune.batch_size, 4))
        model.to("cpu")
        neg, pos = score_histograms(data.val_labels, np.clip(scores, 0.0, 1.0), bins=rc.hist_bins)
        neg, pos = noise_histograms(neg, pos, rc.dp_histogram_noise)  # DP; the totals follow the noised counts
        seconds = time.perf_counter() - t0 + self._take_prep()
        return {"num-examples": int(neg.sum() + pos.sum()), "num-pos": int(pos.sum()),
                "hist-neg": [int(x) for x in neg], "hist-pos": [int(x) for x in pos], "eval-seconds": float(seconds)}

    def train(self, rc: RoundConfig) -> tuple[dict[str, Any], W.Packed]:
        """Fine-tune the held global model -> (metrics, delta of the exchanged arrays)."""
        import torch

        from mammo_fl.common.training.finetune import finetune
        from mammo_fl.common.training.loops import set_trainable
        from mammo_fl.common.utils.device import select_device

        data = self.data(rc)
        if len(data.train) == 0:
            raise DataError(self.site.data_dir, "no training images after the local split")
        t0 = time.perf_counter()
        model = self._load_global(rc)
        assert self.held is not None
        set_trainable(model, rc.train_layers)
        reference = ({k: torch.from_numpy(v) for k, v in self.held.items()} if rc.finetune.proximal_mu > 0 else None)
        seed = rc.finetune.seed * 1000 + rc.server_round  # a different order every round, same for a seed
        dataset = copy.copy(data.train)
        dataset.seed = seed
        cfg = dataclasses.replace(rc.finetune, seed=seed)
        device = select_device(self.site.node_config.get("device", rc.device))
        result = finetune(model, dataset, cfg, device, reference_state=reference,
                          optimizer_state=load_local_optimizer(self.site, rc))
        model.to("cpu")
        seconds = time.perf_counter() - t0 + self._take_prep()
        if rc.fedbn:
            save_local_bn(self.site, rc, model)
        if rc.finetune.local_optimizer_state:
            save_local_optimizer(self.site, rc, result["optimizer_state"])
        trained = P.state_to_numpy(model.state_dict())
        layout = W.Layout.of(self.held, self.exchanged(rc, list(trained)))
        sent = protect_update({k: trained[k] for k in layout.keys}, self.held, rc)  # DP clip (+ noise) as asked
        fault = parse_fault(self.site.fault)  # test-only: nan | scale:F | claim-examples:N act on what leaves
        if fault.changes_update:
            update = W.pack_delta(apply_update_fault(fault, sent, self.held), self.held, layout, rc.wire_dtype)
        else:  # the clip holds on what the coordinator decodes, not only before the fp16/bf16/int8 rounding
            update = pack_within_norm(sent, self.held, layout, rc.wire_dtype, wire_clip_norm(rc))
        metrics = {"num-examples": claimed_examples(fault, int(result["num_examples"])),
                   "train-loss": float(result["train_loss"]), "train-seconds": float(seconds)}
        return metrics, update

    def _take_prep(self) -> float:
        """Data preparation counts as the site's compute, once, in the step that needed it."""
        prep, self._prep_pending = self._prep_pending, 0.0
        return prep

    def handle(self, kind: str, rc: RoundConfig, packed: W.Packed, base: str, target: str,
               min_per_class: int = 0) -> WorkResult:
        """One message: receive, (evaluate), (train).

        A site too small to evaluate still trains (the refusal is returned with the update); an
        EVALUATE message it cannot answer fails with the refusal."""
        from mammo_fl.common.utils.device import set_cpu_threads

        set_cpu_threads(int(self.site.node_config.get("num-threads", 0) or rc.num_threads or 0))
        t0 = time.perf_counter()
        if not self.receive(rc, packed, base, target):
            return WorkResult(status=P.STATUS_NEED_FULL, held=self.held_digest)
        out = WorkResult(held=self.held_digest, timings={"receive": time.perf_counter() - t0})
        if kind == "evaluate" or rc.evaluate:
            try:
                out.eval_metrics = self.evaluate(rc, min_per_class)
            except SiteRefusal as exc:
                if kind != "train" or exc.code != P.TOO_SMALL:
                    raise
                out.eval_refused = exc
        if kind == "train":
            out.train_metrics, out.update = self.train(rc)
        return out


def arrays_digest_or_same(arrays: dict[str, np.ndarray], packed: W.Packed, held_digest: str) -> str:
    """'same' re-uses the held digest; anything else is hashed."""
    return held_digest if packed.mode == W.SAME else W.arrays_digest(arrays)
