"""What one member of a guidance group carries in ``SamplingParams.extra_args``.

Import-light on purpose: the scheduler, both processor front-ends and the API process read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

GROUP_KEY = "alignserve_group"
# stop_reason of a visible member whose group fell out of lockstep: the API process restarts the
# group after its last good token (see server.engine.client).
REGROUP = "alignserve:regroup"

Kind = Literal["principle", "contrast"]


@dataclass(frozen=True)
class Member:
    """One engine request's place in its group."""

    group: str  # unique per attempt of one choice
    visible: bool  # the member whose tokens the client reads
    lead: bool  # its logits are z_lead (z_p / z_adapter); the other's are z_ref
    kind: Kind
    alpha: float
    top_p: float  # nucleus taken on softmax(z_lead / temperature)
    temperature: float
    want_logprobs: bool = False
    size: int = 2

    def args(self) -> dict[str, Any]:
        return {
            GROUP_KEY: {
                "group": self.group,
                "visible": self.visible,
                "lead": self.lead,
                "kind": self.kind,
                "alpha": float(self.alpha),
                "top_p": float(self.top_p),
                "temperature": float(self.temperature),
                "logprobs": bool(self.want_logprobs),
                "size": int(self.size),
            }
        }


def member_of(params: Any) -> Member | None:
    """The group membership in a ``SamplingParams`` (None for an ordinary request)."""
    extra = getattr(params, "extra_args", None) or {}
    raw = extra.get(GROUP_KEY)
    if raw is None:
        return None
    return Member(
        group=str(raw["group"]),
        visible=bool(raw["visible"]),
        lead=bool(raw["lead"]),
        kind=raw["kind"],
        alpha=float(raw["alpha"]),
        top_p=float(raw["top_p"]),
        temperature=float(raw["temperature"]),
        want_logprobs=bool(raw.get("logprobs", False)),
        size=int(raw.get("size", 2)),
    )


def validate(params: Any) -> None:
    """Raise ValueError (vLLM turns it into a 400) for malformed membership."""
    extra = getattr(params, "extra_args", None) or {}
    raw = extra.get(GROUP_KEY)
    if raw is None:
        return
    try:
        member = member_of(params)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed guidance group arguments: {exc}") from None
    assert member is not None
    if member.kind not in ("principle", "contrast"):
        raise ValueError("guidance group kind must be 'principle' or 'contrast'")
    if member.size != 2:
        raise ValueError("guidance groups have exactly two members")
    if not 0.0 < member.top_p <= 1.0 or member.temperature <= 0.0:
        raise ValueError("guidance nucleus parameters out of range")
    if not 0.0 <= member.alpha <= 50.0:
        raise ValueError("guidance alpha out of range")
