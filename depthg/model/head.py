"""Segmentation head and the two probes (METHOD.md §2.1-2.3, §6.2).

- ``SegmentationHead``: f -> code z = W1·drop(f) + b1 + W3·ReLU(W2·drop(f) + b2) + b3, all 1x1 convolutions.
- ``ClusterProbe``: centroids mu [n,K]; spherical k-means written as a loss (hard assignment) and the eval-time
  cluster log-probabilities log_softmax(alpha·cos).
- ``LinearProbe``: a 1x1 convolution K -> n_classes trained with pixel cross-entropy on upsampled logits.
Submodule and parameter names follow the released Lightning checkpoints (net.cluster1.0.*, net.cluster2.{0,2}.*,
cluster_probe.clusters, linear_probe.*), so their state dicts map one to one (depthg.training.checkpoints).

Shapes: B batch, C backbone channels, K code dim, h/w feature grid, H/W label size, n clusters or classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SegmentationHead(nn.Module):
    """Features f [B,C,h,w] -> (teacher features [B,C,h,w], code z [B,K,h,w]) (METHOD §2.1-2.2).

    In training, Dropout2d(p=0.1) is drawn independently three times, in the release's order
    (DG src/modules.py:122-132): before the linear branch, before the nonlinear branch, and on the returned
    teacher features. The first two are always on in training; ``dropout`` (cfg.dropout) switches the third.
    In eval mode all three are the identity.
    """

    def __init__(self, in_channels: int, dim: int, dropout: bool = True):
        super().__init__()
        self.teacher_dropout = dropout
        self.dropout = nn.Dropout2d(p=0.1)
        self.cluster1 = nn.Sequential(nn.Conv2d(in_channels, dim, 1))  # linear branch W1
        self.cluster2 = nn.Sequential(  # nonlinear branch W3·ReLU(W2·)
            nn.Conv2d(in_channels, in_channels, 1), nn.ReLU(), nn.Conv2d(in_channels, dim, 1)
        )

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.cluster1(self.dropout(f)) + self.cluster2(self.dropout(f))  # [B,K,h,w]
        teacher = self.dropout(f) if self.teacher_dropout else f
        return teacher, z


def cosine_to_centroids(code: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every code vector [B,K,h,w] to every centroid [n,K] -> [B,n,h,w]."""
    return torch.einsum("bkhw,nk->bnhw", F.normalize(code, dim=1), F.normalize(centroids, dim=1))


class ClusterProbe(nn.Module):
    """Centroids ``clusters`` [n,K] ~ N(0,1) on the unit sphere (ClusterLookup, DG src/modules.py:647-675)."""

    def __init__(self, dim: int, n_clusters: int):
        super().__init__()
        self.clusters = nn.Parameter(torch.randn(n_clusters, dim))

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        """code [B,K,h,w] -> cosine similarities [B,n,h,w]."""
        return cosine_to_centroids(code, self.clusters)

    def loss(self, code: torch.Tensor) -> torch.Tensor:
        """-mean over positions of max_k cos(z, mu_k): hard assignment, spherical k-means (METHOD §2.3)."""
        return -self(code).max(dim=1).values.mean()

    def log_probs(self, code: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
        """log_softmax(alpha·cos) over clusters [B,n,h,w]; alpha = 2 at final evaluation (METHOD §6.2)."""
        return F.log_softmax(alpha * self(code), dim=1)

    def predict(self, code: torch.Tensor) -> torch.Tensor:
        """Nearest centroid by cosine [B,h,w] (METHOD §6.1)."""
        return self(code).argmax(dim=1)


class LinearProbe(nn.Conv2d):
    """1x1 convolution K -> n_classes on detached codes (METHOD §2.3); forward gives logits [B,n,h,w]."""

    def __init__(self, dim: int, n_classes: int):
        super().__init__(dim, n_classes, 1)
        self.n_classes = n_classes

    def loss(self, code: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Pixel cross-entropy of logits upsampled (bilinear, align_corners=False) to labels [B,H,W].

        Only pixels with 0 <= label < n_classes count (the release's mask, METHOD §2.3). A batch without any
        valid pixel gives 0 (still attached to the graph) instead of the NaN of an empty mean.
        """
        logits = F.interpolate(self(code), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        valid = (labels >= 0) & (labels < self.n_classes)  # [B,H,W]
        if not valid.any():
            return logits.sum() * 0.0
        logits = logits.permute(0, 2, 3, 1)[valid]  # [V,n] for the V valid pixels
        return F.cross_entropy(logits, labels[valid].long())

    def log_probs(self, code: torch.Tensor) -> torch.Tensor:
        """log_softmax of the logits over classes [B,n,h,w] (METHOD §6.2)."""
        return F.log_softmax(self(code), dim=1)

    def predict(self, code: torch.Tensor) -> torch.Tensor:
        """argmax class [B,h,w] (no matching for the linear probe, METHOD §6.2)."""
        return self(code).argmax(dim=1)
