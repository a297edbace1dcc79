"""DepthGModel: frozen backbone + segmentation head + cluster and linear probes (METHOD.md §2, §6.2).

The backbone is frozen (no_grad, eval, bf16 autocast on CUDA); only the head and the two probes train, each with
its own optimiser (METHOD §2.4). ``predict_code`` is the evaluation-time code with horizontal-flip averaging.

Shapes: B batch, H/W image size, C backbone channels, K code dim, h/w feature grid, nh heads, T tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from depthg.model.backbone import DinoBackbone
from depthg.model.head import ClusterProbe, LinearProbe, SegmentationHead


class DepthGModel(nn.Module):
    """backbone -> head -> (cluster probe, linear probe)."""

    def __init__(
        self,
        backbone: str = "vit_small_patch8",
        weights: str | Path = "hub",
        *,
        dim: int = 70,
        n_classes: int = 27,
        extra_clusters: int = 0,
        dropout: bool = True,
        autocast: bool = True,
    ):
        super().__init__()
        assert dim > 0 and n_classes > 0 and extra_clusters >= 0, (
            f"need dim > 0, n_classes > 0, extra_clusters >= 0; got {dim}, {n_classes}, {extra_clusters}"
        )
        self.backbone = DinoBackbone(backbone, weights, autocast=autocast)
        self.head = SegmentationHead(self.backbone.embed_dim, dim, dropout=dropout)
        self.cluster_probe = ClusterProbe(dim, n_classes + extra_clusters)
        self.linear_probe = LinearProbe(dim, n_classes)
        self.n_classes, self.extra_clusters, self.dim = n_classes, extra_clusters, dim

    @classmethod
    def from_config(cls, section: Any, *, autocast: bool = True) -> DepthGModel:
        """Build from a config section with backbone, weights, dim, dropout, n_classes, extra_clusters."""
        return cls(
            section.backbone,
            section.weights,
            dim=section.dim,
            n_classes=section.n_classes,
            extra_clusters=section.extra_clusters,
            dropout=section.dropout,
            autocast=autocast,
        )

    def features(self, x: torch.Tensor, *, attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Frozen backbone: x [B,3,H,W] -> (f [B,C,h,w], attention [B,nh,T,T] or None), no grad."""
        return self.backbone(x, attention=attention)

    def forward(self, x: torch.Tensor, *, attention: bool = False) -> dict[str, torch.Tensor]:
        """x [B,3,H,W] -> {"feats": teacher f [B,C,h,w], "code": z [B,K,h,w], "attn": [B,nh,T,T] if asked}.

        In training mode the head's dropout is active (METHOD §2.1); in eval mode it is the identity.
        """
        f, attn = self.features(x, attention=attention)
        feats, code = self.head(f)
        out = {"feats": feats, "code": code}
        if attention:
            out["attn"] = attn
        return out

    @torch.no_grad()
    def predict_code(self, x: torch.Tensor, *, flip: bool = True) -> torch.Tensor:
        """Evaluation code ½(z(x) + flip(z(flip(x)))) [B,K,h,w], flip = horizontal (METHOD §6.2); z(x) if not flip.

        flip=False is the release's validation during training (METHOD §6.1).
        """
        assert not self.training, "predict_code is for evaluation: call model.eval() first (dropout would be on)"
        code = self(x)["code"]
        if not flip:
            return code
        code_flipped = self(x.flip(dims=[-1]))["code"].flip(dims=[-1])
        return (code + code_flipped) / 2

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Parameter groups of the three optimisers (head 5e-4, probes 5e-3 in the release, METHOD §2.4)."""
        return {
            "head": list(self.head.parameters()),
            "cluster_probe": list(self.cluster_probe.parameters()),
            "linear_probe": list(self.linear_probe.parameters()),
        }
