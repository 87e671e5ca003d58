"""Guidance groups inside the vLLM engine core: rows of one batch combined by an align_core rule.

A *guidance group* is two engine requests that decode the same tokens from two contexts:

* linear alignment: the conversation with a principle (the *lead*, z_p) and without it
  (the *visible* member the client reads, z_0);
* adapter contrast: the conversation under a deployed adapter (lead and visible) and under the
  base model or another deployment (the reference).

At each step both rows get ``align_core.linear_alignment_logits(z_lead, z_ref, ...)``, so both
members sample the same token and their contexts grow identically. Three parts keep that true:

* :mod:`.scheduler` (engine-core process): admits, preempts, aborts the members together and
  turns any step in which they fell out of lockstep into a restart signal, never a token;
* :mod:`.processor_v1` / :mod:`.processor_v2` (worker): the two logits-processor front-ends of
  vLLM's model runners, both calling :func:`.combine.combine_rows`;
* :mod:`.groups`: what a member carries in ``SamplingParams.extra_args``.
"""
