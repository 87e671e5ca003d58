"""LD-Align latent-distance weights and weighted mean.

Luo, arXiv 2404.06390; docs/algorithms.md §3.

[INFERRED] reconstruction (§3.2): each pair (SFT winner ``y*``, self-generated loser ``y'``) is
encoded into a latent space; the distance ``d_i = dist(E(x, y*), E(x, y'))`` is normalised into a
weight ``w_i`` (larger distance => larger weight), and the DPO objective becomes
``mean_i w_i · L_DPO,i``. Weights never carry gradient (no gradient reaches the encoder).

Shapes: ``B`` pairs, ``k`` latent dimension.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from align_core.registry import Registry

_EPS = 1e-12

DISTANCE_METRICS = ("l2", "cosine")


def latent_distance(chosen_latents: Tensor, rejected_latents: Tensor, metric: str = "l2") -> Tensor:
    """Distance between paired latent vectors, detached (LD-Align §3.2 [INFERRED]).

    Args:
        chosen_latents: ``(B, k)`` ``E(x, y*)`` of the winners.
        rejected_latents: ``(B, k)`` ``E(x, y')`` of the losers.
        metric: ``"l2"`` (Euclidean) or ``"cosine"`` (``1 − cos``, in [0, 2]).

    Returns:
        ``(B,)`` non-negative distances.
    """
    a, b = chosen_latents.detach(), rejected_latents.detach()
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"expected two (B, k) tensors, got {tuple(a.shape)}, {tuple(b.shape)}")
    if metric == "l2":
        return torch.linalg.vector_norm(a - b, dim=-1)
    if metric == "cosine":
        return 1.0 - F.cosine_similarity(a, b, dim=-1)
    raise ValueError(f"unknown distance metric {metric!r}; valid: {', '.join(DISTANCE_METRICS)}")


def softmax_weights(distances: Tensor, tau: float = 1.0) -> Tensor:
    """``w = B · softmax(d / τ)``: mean 1, sharper for small ``τ``. ``(B,)`` -> ``(B,)``."""
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    d = distances.detach()
    return d.numel() * torch.softmax(d / tau, dim=-1)


def mean_weights(distances: Tensor, tau: float = 1.0) -> Tensor:
    """``w = d / mean(d)``: mean 1 (all 0 if every distance is 0). ``(B,)`` -> ``(B,)``.

    ``tau`` is accepted for a uniform signature and ignored.
    """
    d = distances.detach()
    return d / d.mean().clamp_min(_EPS)


def sigmoid_weights(distances: Tensor, tau: float = 1.0) -> Tensor:
    """``w = σ((d − μ_d) / (τ·s_d))`` with the batch mean and (population) standard deviation.

    ``τ = 1`` is the spec's form; equal distances give ½ everywhere. ``(B,)`` -> ``(B,)``.
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    d = distances.detach()
    std = d.std(unbiased=False) if d.numel() > 1 else d.new_zeros(())
    return torch.sigmoid((d - d.mean()) / (tau * std.clamp_min(_EPS)))


def uniform_weights(distances: Tensor, tau: float = 1.0) -> Tensor:
    """All ones: the weighted objective reduces to SPIN/DPO. ``(B,)`` -> ``(B,)``."""
    return torch.ones_like(distances.detach())


@dataclass(frozen=True)
class Weighting:
    """A registered distance normaliser ``fn(distances (B,), tau) -> weights (B,)``."""

    fn: Callable[[Tensor, float], Tensor]
    mean_one: bool
    """The weights average to 1 over the batch, so the loss scale matches unweighted DPO."""

    def __call__(self, distances: Tensor, tau: float = 1.0) -> Tensor:
        """Detached weights ``(B,)`` from distances ``(B,)``."""
        return self.fn(distances, tau).detach()


WEIGHTINGS: Registry[Weighting] = Registry("weighting")
"""Latent-distance normalisers by name."""
WEIGHTINGS.register("softmax", Weighting(softmax_weights, mean_one=True))
WEIGHTINGS.register("mean", Weighting(mean_weights, mean_one=True))
WEIGHTINGS.register("sigmoid", Weighting(sigmoid_weights, mean_one=False))
WEIGHTINGS.register("uniform", Weighting(uniform_weights, mean_one=True))


def latent_distance_weights(
    chosen_latents: Tensor,
    rejected_latents: Tensor,
    *,
    normaliser: str = "softmax",
    metric: str = "l2",
    tau: float = 1.0,
) -> Tensor:
    """LD-Align pair weights: a ``WEIGHTINGS`` normaliser of ``latent_distance`` (detached).

    ``chosen_latents``, ``rejected_latents``: ``(B, k)``; returns ``(B,)``.
    """
    distances = latent_distance(chosen_latents, rejected_latents, metric)
    return WEIGHTINGS.get(normaliser)(distances, tau)


def weighted_mean(losses: Tensor, weights: Tensor | None = None) -> Tensor:
    """``mean_i w_i · losses_i`` (LD-Align objective, §3.2); the weights are detached.

    ``losses``, ``weights``: ``(B,)``; ``weights=None`` is the plain mean. Returns a scalar.
    """
    if weights is None:
        return losses.mean()
    if weights.shape != losses.shape:
        raise ValueError(f"weights {tuple(weights.shape)} must match losses {tuple(losses.shape)}")
    return (losses * weights.detach().to(losses.dtype)).mean()
