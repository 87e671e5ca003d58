"""External reward scorers for rDPO (docs/algorithms.md §5.1 step 2), usable offline.

A scorer maps ``(prompts, responses)`` to one float per response. Gallego's rDPO asks an LLM
judge; on this machine the built-in scorers are cheap and deterministic:

* ``refusal``: the binary harmlessness judge of rDPO's safety task, approximated by a refusal
  detector (1.0 when the answer refuses or warns, else 0.0). Our own keyword list.
* ``length``: prefers concise answers, ``1 / (1 + words/50)``; a stand-in for neutrality/concision.

The packaged offensive-language classifier (docs/assets.md, ``alt-profanity-check``) needs
scikit-learn, which is not a dependency; register it here when it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from align_core import Registry

Scorer = Callable[[Sequence[str], Sequence[str]], list[float]]

REFUSAL_MARKERS = (
    "i'm sorry", "i am sorry", "i cannot", "i can't", "i can not", "i won't", "i will not",
    "i'm not able", "i am not able", "i'm unable", "i am unable", "as an ai", "not appropriate",
    "cannot help", "can't help", "cannot assist", "can't assist", "i must decline", "i refuse",
    "illegal", "unethical", "harmful", "not comfortable", "against my",
)


def refusal_score(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """1.0 for an answer that refuses or warns (harmless by the safety judge's rule), else 0.0."""
    return [
        1.0 if any(m in r.lower().replace("’", "'") for m in REFUSAL_MARKERS) else 0.0
        for r in responses
    ]


def length_score(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Concision: ``1 / (1 + words / 50)`` in (0, 1]."""
    return [1.0 / (1.0 + len(r.split()) / 50.0) for r in responses]


SCORERS: Registry[Scorer] = Registry("scorer")
SCORERS.register("refusal", refusal_score)
SCORERS.register("length", length_score)
