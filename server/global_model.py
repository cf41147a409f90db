"""The global model on the server: an fp32 master copy as numpy arrays plus checkpoint metadata.

Round checkpoints are written in the same self-describing format as `mammo-train` output
(common.checkpoint), so `mammo-train predict` and `load_checkpoint` read them unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mammo_fl.common.federation import protocol as P
from mammo_fl.common.utils.errors import DataError


@dataclass
class GlobalModel:
    arrays: dict[str, np.ndarray]
    kind: str
    model_spec: dict[str, Any]
    preprocessing: dict[str, Any]
    class_names: list[str]
    bn_prefixes: list[str]

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> GlobalModel:
        from mammo_fl.common.models.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        if ckpt.kind != "whole_image":
            raise DataError(path, f"federated fine-tuning needs a whole_image checkpoint, got {ckpt.kind!r}")
        return cls(
            arrays=P.state_to_numpy(ckpt.model.state_dict()),
            kind=ckpt.kind,
            model_spec=ckpt.model_spec,
            preprocessing=ckpt.preprocessing,
            class_names=ckpt.class_names,
            bn_prefixes=P.batchnorm_prefixes(ckpt.model),
        )

    def exchanged_keys(self, fedbn: bool, train_layers: str = "all") -> list[str]:
        """Keys a round can change and the sites send back: the trained layers' arrays (FedBN: minus
        BatchNorm weights and statistics)."""
        return P.exchanged_keys(self.arrays, self.bn_prefixes, train_layers, fedbn)

    def save(self, path: Path, provenance: dict[str, Any], metrics: dict[str, Any]) -> None:
        import torch

        from mammo_fl.common.models.checkpoint import save_checkpoint
        from mammo_fl.common.models import build_model

        model = build_model(self.kind, self.model_spec)
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in self.arrays.items()}, strict=True)
        save_checkpoint(
            path,
            model,
            kind=self.kind,
            model_spec=self.model_spec,
            preprocessing=self.preprocessing,
            class_names=self.class_names,
            provenance=provenance,
            metrics=metrics,
        )
