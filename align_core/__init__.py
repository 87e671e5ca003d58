"""align_core: the alignment math of alignserve, as small pure tensor functions.

Only ``torch`` and the standard library are imported here (a test enforces it). The normative
specification is ``docs/algorithms.md``. Losses return per-example ``(B,)`` tensors; the
caller reduces them (``weighted_mean``, ``PointwiseLoss.reduce``). Registries hold the valid
names and capability flags for trainers and config validation.
"""

from align_core.afd import (
    best_of_n,
    discriminator_accuracy,
    discriminator_loss,
    discriminator_losses,
    gather_best,
    implicit_reward_baseline,
    select_best_of_n,
)
from align_core.dpo import (
    chosen_nll_loss,
    dpo_loss,
    implicit_rewards,
    ipo_loss,
    preference_margin,
    robust_dpo_loss,
    soft_label_dpo_loss,
)
from align_core.linear_alignment import (
    combine_logits,
    greedy,
    linear_alignment_logits,
    next_token,
    nucleus_mask,
    sample,
)
from align_core.logprobs import (
    IGNORE_INDEX,
    packed_sequence_logps,
    per_token_logps,
    sequence_logps,
)
from align_core.pair_losses import PAIR_LOSSES, PairLoss
from align_core.pointwise import (
    POINTWISE_LOSSES,
    PointwiseLoss,
    group_mean,
    group_weights,
    pointwise_dpo_continuous_losses,
    pointwise_dpo_losses,
    positive_mask,
    ulma_beta_logloss_losses,
    ulma_continuous_losses,
    ulma_loss,
    ulma_losses,
    unlikelihood_losses,
)
from align_core.rdpo import (
    rdpo_acceptance_mask,
    rdpo_filter_loss,
    rdpo_loss,
    rdpo_margin_loss,
    rdpo_target_prob,
    rdpo_weighted_loss,
)
from align_core.registry import DuplicateNameError, Registry, UnknownNameError
from align_core.reward import bradley_terry_loss, bradley_terry_losses, pairwise_accuracy
from align_core.weighting import (
    DISTANCE_METRICS,
    WEIGHTINGS,
    Weighting,
    latent_distance,
    latent_distance_weights,
    mean_weights,
    sigmoid_weights,
    softmax_weights,
    uniform_weights,
    weighted_mean,
)

__all__ = [
    "DISTANCE_METRICS",
    "IGNORE_INDEX",
    "PAIR_LOSSES",
    "POINTWISE_LOSSES",
    "WEIGHTINGS",
    "DuplicateNameError",
    "PairLoss",
    "PointwiseLoss",
    "Registry",
    "UnknownNameError",
    "Weighting",
    "best_of_n",
    "bradley_terry_loss",
    "bradley_terry_losses",
    "chosen_nll_loss",
    "combine_logits",
    "discriminator_accuracy",
    "discriminator_loss",
    "discriminator_losses",
    "dpo_loss",
    "gather_best",
    "greedy",
    "group_mean",
    "group_weights",
    "implicit_reward_baseline",
    "implicit_rewards",
    "ipo_loss",
    "latent_distance",
    "latent_distance_weights",
    "linear_alignment_logits",
    "mean_weights",
    "next_token",
    "nucleus_mask",
    "packed_sequence_logps",
    "pairwise_accuracy",
    "per_token_logps",
    "pointwise_dpo_continuous_losses",
    "pointwise_dpo_losses",
    "positive_mask",
    "preference_margin",
    "rdpo_acceptance_mask",
    "rdpo_filter_loss",
    "rdpo_loss",
    "rdpo_margin_loss",
    "rdpo_target_prob",
    "rdpo_weighted_loss",
    "robust_dpo_loss",
    "sample",
    "select_best_of_n",
    "sequence_logps",
    "sigmoid_weights",
    "soft_label_dpo_loss",
    "softmax_weights",
    "ulma_beta_logloss_losses",
    "ulma_continuous_losses",
    "ulma_loss",
    "ulma_losses",
    "uniform_weights",
    "unlikelihood_losses",
    "weighted_mean",
]
