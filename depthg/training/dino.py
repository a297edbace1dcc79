"""The DINO objective (Caron et al., ICCV 2021, §3.1 and Alg. 1): projection head and self-distillation loss.

Shapes: B images, V views per image (V_t teacher views = the global crops, V_s student views = global + local
crops), C backbone width, K prototypes (output dimension of the head).

The student sees every view, the teacher (an EMA of the student) only the global ones. Teacher outputs are centred
(a running mean over batches, which keeps one prototype from taking over) and sharpened (temperature tau_t below the
student's tau_s, which keeps the output from going uniform); the loss is the cross-entropy between the teacher's and
the student's distributions over all pairs of different views.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DinoHead(nn.Module):
    """CLS token [B,C] -> logits [B,K]: a 3-layer MLP with GELU, an L2-normalised bottleneck and a weight-normalised
    last layer without bias (DINO §3.1 "projection head", its Appendix on the head; the weight norm's gain is fixed
    at 1, as DINO's ``norm_last_layer``, so the logits are cosines)."""

    def __init__(
        self, in_dim: int, *, hidden: int = 512, bottleneck: int = 128, out_dim: int = 1024, batch_norm: bool = False
    ):
        super().__init__()
        # batch_norm (DINO's use_bn): removes what all inputs share, so near-identical tokens of a random ViT still
        # give distinct outputs and the teacher's targets are not uniform at the start
        norm = (lambda: nn.BatchNorm1d(hidden)) if batch_norm else nn.Identity
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden),
            norm(),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            norm(),
            nn.GELU(),
            nn.Linear(hidden, bottleneck),
        )
        for m in self.mlp:
            if isinstance(m, nn.Linear):  # DINO initialises the head with a truncated normal of std 0.02
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck))
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [...,C] -> logits [...,K] (tokens of any leading shape; batch norm sees them as one batch)."""
        z = F.normalize(self.mlp(x.reshape(-1, x.shape[-1])), dim=-1).view(*x.shape[:-1], -1)  # [...,bottleneck]
        return z @ F.normalize(self.prototypes, dim=-1).T  # [B,K]


@torch.no_grad()
def sinkhorn(logits: torch.Tensor, temp: float, iterations: int = 3) -> torch.Tensor:
    """Teacher targets [M,K] from logits [M,K] by Sinkhorn-Knopp (SwAV; DINOv2's teacher centring): exp(l / temp)
    scaled alternately so that every prototype takes an equal share of the M samples and every sample sums to 1.
    Unlike a running centre it needs no history: the targets are sharp and spread over prototypes from the first
    iteration, where the synthetic world's similar scenes otherwise let centring flatten them into the uniform
    distribution (the collapse that a loss stuck at log K shows)."""
    q = torch.exp((logits - logits.max()) / temp).T.double()  # [K,M], in float64: exp of up to 1/temp = 25
    M, K = q.shape[1], q.shape[0]
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(1, keepdim=True) * K  # prototypes: 1/K each
        q /= q.sum(0, keepdim=True) * M  # samples: 1/M each
    return (q * M).T.float()


class DinoLoss(nn.Module):
    """Cross-entropy of centred, sharpened teacher outputs against student outputs over pairs of distinct views.

    The centre is a buffer (it is saved with the checkpoint) updated after each loss with momentum ``center_m``
    from the batch mean of the teacher logits (DINO Alg. 1: C = m*C + (1-m)*mean(t))."""

    def __init__(self, out_dim: int, *, student_temp: float = 0.1, center_m: float = 0.9, centering: str = "center"):
        super().__init__()
        assert centering in ("center", "sinkhorn"), f"centering must be 'center' or 'sinkhorn', got {centering!r}"
        self.student_temp, self.center_m, self.centering = student_temp, center_m, centering
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """student [V_s,B,K], teacher [V_t,B,K] (view i < V_t of both is the same global crop) -> scalar loss."""
        V_s, V_t = student.shape[0], teacher.shape[0]
        assert V_s > V_t and student.shape[1:] == teacher.shape[1:], (
            f"student views {tuple(student.shape)} must extend the teacher's {tuple(teacher.shape)}"
        )
        if self.centering == "sinkhorn":
            t = sinkhorn(teacher.reshape(-1, teacher.shape[-1]), teacher_temp).view_as(teacher)
        else:
            t = F.softmax((teacher - self.center) / teacher_temp, dim=-1).detach()  # [V_t,B,K]
        log_s = F.log_softmax(student / self.student_temp, dim=-1)  # [V_s,B,K]
        ce = -(t[:, None] * log_s[None]).sum(-1).mean(-1)  # [V_t,V_s]: mean over the batch
        pairs = ~torch.eye(V_t, V_s, dtype=torch.bool, device=ce.device)  # a view is never its own target
        loss = ce[pairs].mean()
        with torch.no_grad():
            self.center.mul_(self.center_m).add_(
                teacher.reshape(-1, teacher.shape[-1]).mean(0, keepdim=True), alpha=1 - self.center_m
            )
        return loss


class PatchLoss(nn.Module):
    """iBOT's masked patch self-distillation (Zhou et al., ICLR 2022, §3.2), the dense companion of DINO's loss:
    the student sees a global crop with some patches masked and predicts, at each masked patch, the teacher's
    centred and sharpened distribution of the unmasked crop. It trains the patch tokens themselves, which is what
    STEGO and DepthG distil; DINO's CLS loss shapes them only through attention."""

    def __init__(self, out_dim: int, *, student_temp: float = 0.1, center_m: float = 0.9, centering: str = "center"):
        super().__init__()
        assert centering in ("center", "sinkhorn"), f"centering must be 'center' or 'sinkhorn', got {centering!r}"
        self.student_temp, self.center_m, self.centering = student_temp, center_m, centering
        self.register_buffer("center", torch.zeros(1, 1, out_dim))

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, teacher_temp: float
    ) -> torch.Tensor:
        """student, teacher [B,N,K] patch logits of the same crops, mask [B,N] bool (True = masked for the student)
        -> scalar: cross-entropy at masked patches, mean per image, then over images with a mask."""
        assert student.shape == teacher.shape and mask.shape == student.shape[:2], (
            f"student {tuple(student.shape)}, teacher {tuple(teacher.shape)}, mask {tuple(mask.shape)}"
        )
        if self.centering == "sinkhorn":  # over the masked patches, the ones that are predicted
            t = torch.zeros_like(teacher)
            t[mask] = sinkhorn(teacher[mask], teacher_temp) if mask.any() else t[mask]
        else:
            t = F.softmax((teacher - self.center) / teacher_temp, dim=-1).detach()
        ce = -(t * F.log_softmax(student / self.student_temp, dim=-1)).sum(-1)  # [B,N]
        n = mask.sum(1)  # [B]
        has = n > 0
        loss = ((ce * mask).sum(1)[has] / n[has]).mean() if has.any() else student.sum() * 0
        with torch.no_grad():
            self.center.mul_(self.center_m).add_(teacher.mean((0, 1), keepdim=True), alpha=1 - self.center_m)
        return loss
