"""One DepthG training iteration's losses (METHOD.md §2.5, §3.6), as a module DDP can wrap.

``TrainStep`` owns everything that is trained: the segmentation head, the cluster and linear probes and, when
3D-LHP is on, its projection. Its ``forward`` takes backbone features, so the frozen backbone stays outside DDP.
The correlation terms (self, kNN, negatives, DFC) and the optional 3D-LHP branch come from :mod:`depthg.model.losses`
and :mod:`depthg.model.lhp`; the probes are trained on detached codes in the same step (METHOD.md §2.3):

    L = (λ_inter L_inter + λ_intra L_intra + λ_neg L_neg + λ_dep(t) L_dep) · (w_corr − balance)
        + lhp_weight · (same terms on the propagated, projected codes)      [if loss.lhp]
        + L_linear + L_cluster

Shapes: B batch, C backbone channels, K code dim, h/w feature grid, R input resolution, S sample-grid side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from depthg.config import Config
from depthg.model import lhp as lhp_mod
from depthg.model.losses import CorrelationTerms, correlation_loss
from depthg.model.sampling import choose_coords


@dataclass(frozen=True)
class StepSettings:
    """The scalars one iteration needs, unpacked from the config once (DESIGN.md §10.3)."""

    terms: CorrelationTerms  # weights, shifts and flags; the DFC weight and shift come per iteration
    dfc: bool
    depth_sampling: str
    fps_coords: str
    depth_lifting: str
    fps_random_start: bool
    correspondence_weight: float
    lhp: bool
    lhp_weight: float
    lhp_depth_weight: float
    lhp_balance: float
    lhp_fidelity: str
    lhp_neighbourhood: str
    lhp_k: int
    lhp_wiring: str = "paper"

    @classmethod
    def from_config(cls, cfg: Config) -> StepSettings:
        lo, fi = cfg.loss, cfg.fidelity
        return cls(
            terms=CorrelationTerms(
                pos_intra_weight=lo.pos_intra_weight,
                pos_intra_shift=lo.pos_intra_shift,
                pos_inter_weight=lo.pos_inter_weight,
                pos_inter_shift=lo.pos_inter_shift,
                neg_inter_weight=lo.neg_inter_weight,
                neg_inter_shift=lo.neg_inter_shift,
                neg_samples=lo.neg_samples,
                dfc_target=fi.dfc_target,
                pointwise=lo.pointwise,
                zero_clamp=lo.zero_clamp,
                stabilize=lo.stabilize,
            ),
            dfc=lo.dfc,
            depth_sampling=lo.depth_sampling,
            fps_coords=fi.fps_coords,
            depth_lifting=fi.depth_lifting,
            fps_random_start=fi.fps_start == "paper",
            correspondence_weight=lo.correspondence_weight,
            lhp=lo.lhp,
            lhp_weight=lo.lhp_weight,
            lhp_depth_weight=lo.lhp_depth_weight,
            # METHOD §3.6: the main terms are scaled by (w_corr - lhp_weight) when lhp_weight_balance is set.
            lhp_balance=lo.lhp_weight if (lo.lhp and lo.lhp_weight_balance) else 0.0,
            lhp_fidelity=fi.lhp,
            lhp_neighbourhood=lo.lhp_neighbourhood,
            lhp_k=lo.lhp_k,
            lhp_wiring=fi.lhp_wiring,
        )


class TrainStep(nn.Module):
    """head + probes (+ LHP projection): backbone features in, every loss term out."""

    def __init__(
        self, head: nn.Module, cluster_probe: nn.Module, linear_probe: nn.Module, settings: StepSettings, code_dim: int
    ):
        super().__init__()
        self.head, self.cluster_probe, self.linear_probe = head, cluster_probe, linear_probe
        self.settings = settings
        self.lhp_projection = lhp_mod.LHPProjection(code_dim) if settings.lhp else None
        if self.lhp_projection is not None and settings.lhp_wiring == "reference":
            # In the release the projection is in no optimiser and keeps its initialisation (METHOD.md §5.2); frozen
            # here, so DDP does not wait for its gradients. Gradient still flows through it into the head.
            self.lhp_projection.requires_grad_(False)

    def forward(
        self,
        f: torch.Tensor,
        f_pos: torch.Tensor,
        depth: torch.Tensor,
        depth_pos: torch.Tensor,
        label: torch.Tensor,
        *,
        samples: int,
        dfc_weight: float,
        dfc_shift: float,
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        """f, f_pos [B,C,h,w] frozen features; depth(s) [B,1,R,R]; label [B,R,R] -> dict of scalar terms."""
        s = self.settings
        B, _, h, w = f.shape
        f_t, z = self.head(f)  # dropout-ed teacher features and codes [B,K,h,w] (METHOD §2.1)
        f_pos_t, z_pos = self.head(f_pos)
        start = "random" if s.fps_random_start else 0

        def draw_coords() -> list[torch.Tensor]:  # c1, c2 [B,S,S,2]
            return [
                choose_coords(
                    s.depth_sampling,
                    B,
                    (h, w),
                    samples,
                    depth=d,
                    fidelity=s.fps_coords,
                    lifting=s.depth_lifting,
                    start=start,
                    generator=generator,
                )
                for d in (depth, depth_pos)
            ]

        coords = draw_coords()
        terms = self._correlation(f_t, f_pos_t, z, z_pos, depth, depth_pos, coords, dfc_weight, dfc_shift, generator)
        out = {k: v for k, v in terms.items()}
        out["correlation"] = terms["total"] * (s.correspondence_weight - s.lhp_balance)
        total = out["correlation"]
        # Reference wiring (METHOD.md §5.2): the release adds the LHP terms only inside its depth-loss branch, so
        # without DFC they never count; paper wiring adds them whenever 3D-LHP is on.
        lhp_counts = s.dfc or s.lhp_wiring == "paper"
        if self.lhp_projection is not None and lhp_counts:
            # 3D-LHP (METHOD §5.2-5.3): propagate the anchor's codes to its 3D neighbours, project both sides,
            # and run the same correlation terms again. Paper wiring reuses the main terms' coordinates; reference
            # wiring draws its own, as the release's second loss call does (FPS with start 0 gives the same ones).
            if s.lhp_wiring == "reference":
                coords = draw_coords()
            weights = lhp_mod.lhp_weights(
                depth,
                (h, w),
                fidelity=s.lhp_fidelity,
                neighbourhood=s.lhp_neighbourhood,
                k=s.lhp_k,
                lifting=s.depth_lifting,
            )  # [B,N,N]
            z_hat = self.lhp_projection(lhp_mod.propagate(z, weights))
            z_pos_hat = self.lhp_projection(z_pos)
            lhp_terms = self._correlation(
                f_t,
                f_pos_t,
                z_hat,
                z_pos_hat,
                depth,
                depth_pos,
                coords,
                dfc_weight * s.lhp_depth_weight,
                dfc_shift,
                generator,
            )
            out["lhp"] = lhp_terms["total"] * s.lhp_weight
            total = total + out["lhp"]
        z_det = z.detach()  # the probes never send gradient into the head (METHOD §2.3)
        out["linear"] = self.linear_probe.loss(z_det, label)
        out["cluster"] = self.cluster_probe.loss(z_det)
        out["loss"] = total + out["linear"] + out["cluster"]
        return out

    def _correlation(self, f1, f2, z1, z2, d1, d2, coords, dfc_weight, dfc_shift, generator):
        s = self.settings
        terms = s.terms.with_dfc(dfc_weight if s.dfc else 0.0, dfc_shift)
        return correlation_loss(f1, f2, z1, z2, d1, d2, coords[0], coords[1], terms, generator=generator)
