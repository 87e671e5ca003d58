"""The registry of pair losses (one call signature) and their capability flags.

Trainers and config validation read ``PAIR_LOSSES.names()`` and the flags; the loop never
branches on a loss's name. The losses themselves live in ``align_core.dpo`` (DPO, cDPO, IPO,
robust DPO) and ``align_core.rdpo`` (Gallego's rDPO and its alternatives).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor

from align_core.dpo import dpo_loss, ipo_loss, robust_dpo_loss
from align_core.rdpo import rdpo_filter_loss, rdpo_loss, rdpo_margin_loss, rdpo_weighted_loss
from align_core.registry import Registry


@dataclass(frozen=True)
class PairLoss:
    """A registered pair loss and its capability flags.

    Attributes:
        fn: the loss function, called as
            ``fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta, **options)``
            plus ``chosen_scores=, rejected_scores=`` when ``needs_reward_scores``.
        needs_reference: the loss uses reference-model log-probs.
        needs_reward_scores: the loss needs external reward scores for both responses.
        options: names of the extra float hyper-parameters ``fn`` accepts besides ``beta``
            (config validation can check keys against it).
        paper: the paper and equation implemented.
    """

    fn: Callable[..., Tensor]
    needs_reference: bool = True
    needs_reward_scores: bool = False
    options: tuple[str, ...] = ()
    paper: str = ""

    def __call__(
        self,
        policy_chosen_logps: Tensor,
        policy_rejected_logps: Tensor,
        ref_chosen_logps: Tensor,
        ref_rejected_logps: Tensor,
        *,
        beta: float,
        chosen_scores: Tensor | None = None,
        rejected_scores: Tensor | None = None,
        options: Mapping[str, float] | None = None,
    ) -> Tensor:
        """Uniform call: checks option names and scores, then calls ``fn``. Returns ``(B,)``.

        ``options`` maps names in ``self.options`` to values (e.g. ``{"label_smoothing": 0.1}``);
        an unknown name raises ``ValueError``. Scores (``(B,)`` each) are passed on only when
        ``needs_reward_scores``; otherwise they are ignored.
        """
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"unknown options {unknown}; this loss accepts {list(self.options)}")
        extra: dict[str, object] = dict(options)
        if self.needs_reward_scores:
            if chosen_scores is None or rejected_scores is None:
                raise ValueError("this loss needs chosen_scores and rejected_scores")
            extra.update(chosen_scores=chosen_scores, rejected_scores=rejected_scores)
        return self.fn(
            policy_chosen_logps,
            policy_rejected_logps,
            ref_chosen_logps,
            ref_rejected_logps,
            beta=beta,
            **extra,
        )


PAIR_LOSSES: Registry[PairLoss] = Registry("pair loss")
"""Pair losses by name. Flags: ``needs_reference``, ``needs_reward_scores``; ``options``."""
for _name, _entry in (
    ("dpo", PairLoss(dpo_loss, options=("label_smoothing",), paper="Rafailov 2023 Eq. 7; cDPO")),
    ("ipo", PairLoss(ipo_loss, paper="Azar 2023, IPO")),
    (
        "robust_dpo",
        PairLoss(robust_dpo_loss, options=("label_smoothing",), paper="Chowdhury 2024, robust DPO"),
    ),
    (
        "rdpo",
        PairLoss(rdpo_loss, needs_reward_scores=True, options=("tau",), paper="Gallego 2024"),
    ),
    (
        "rdpo_filter",
        PairLoss(rdpo_filter_loss, needs_reward_scores=True, paper="Gallego 2024, alt. (a)"),
    ),
    (
        "rdpo_weighted",
        PairLoss(
            rdpo_weighted_loss,
            needs_reward_scores=True,
            options=("tau",),
            paper="Gallego 2024, alt. (b)",
        ),
    ),
    (
        "rdpo_margin",
        PairLoss(
            rdpo_margin_loss,
            needs_reward_scores=True,
            options=("gamma",),
            paper="Gallego 2024, alt. (c)",
        ),
    ),
):
    PAIR_LOSSES.register(_name, _entry)
