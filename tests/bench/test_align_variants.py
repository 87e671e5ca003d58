"""The ablation's dataset forms (bench/align_variants.py) take exactly the pairs they claim."""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from bench.align_variants import VARIANTS, dataset_forms, derived_datasets, variant_spec
from trainers.distill import FALLBACK_REFUSALS

OWN_REFUSAL = "I'm sorry, but as a chatbot designed to assist with cooking, I'm not equipped to."


def pair(kind: str, chosen: str, rejected: str, n: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"prompt {n}"}], "chosen": chosen,
            "rejected": rejected, "kind": kind}


PAIRS = [
    pair("harmful", OWN_REFUSAL, "Here is how.", 0),            # linear alignment's refusal
    pair("harmful", FALLBACK_REFUSALS[1], "Sure: step one.", 1),  # a fallback refusal
    pair("benign", "A recipe: flour, water.", OWN_REFUSAL, 2),     # the model's over-refusal
    pair("benign", "Paris.", FALLBACK_REFUSALS[0], 3),             # a fallback refusal
]


def prompts(rows: list[dict[str, Any]]) -> list[str]:
    return [r["messages"][0]["content"] for r in rows]


def test_each_form_keeps_the_pairs_it_names() -> None:
    forms = dataset_forms(PAIRS)
    assert prompts(forms["pairs"][1]) == ["prompt 0", "prompt 1", "prompt 2", "prompt 3"]
    assert all(set(r) == {"messages", "chosen", "rejected"} for r in forms["pairs"][1])
    assert prompts(forms["pairs-no-canned"][1]) == ["prompt 0", "prompt 1", "prompt 2"]
    assert prompts(forms["pairs-own-chosen"][1]) == ["prompt 0", "prompt 2", "prompt 3"]
    assert prompts(forms["pairs-benign2"][1])[4:] == ["prompt 2", "prompt 3"]
    assert prompts(forms["pairs-half"][1]) == ["prompt 0", "prompt 1"]
    assert prompts(forms["pairs-harmful2"][1])[4:] == ["prompt 0", "prompt 1"]


def test_half_canned_keeps_every_other_benign_fallback_rejection() -> None:
    extra = [pair("benign", f"Answer {n}.", FALLBACK_REFUSALS[n % 4], n) for n in (4, 5, 6)]
    rows = dataset_forms(PAIRS + extra)["pairs-half-canned"][1]
    assert prompts(rows) == ["prompt 0", "prompt 1", "prompt 2", "prompt 3", "prompt 5"]


def test_canned_chosen_replaces_only_the_harmful_chosen() -> None:
    rows = dataset_forms(PAIRS)["pairs-canned-chosen"][1]
    assert [r["chosen"] for r in rows] == [FALLBACK_REFUSALS[0], FALLBACK_REFUSALS[1],
                                           "A recipe: flour, water.", "Paris."]
    assert [r["rejected"] for r in rows] == [p["rejected"] for p in PAIRS]


def test_prefilled_refusals_replace_only_fallback_chosen() -> None:
    prefilled = {0: "I'm sorry, but I can't explain that.",   # chosen is the model's own already
                 1: "I'm sorry, but I cannot help with weapons.",
                 3: "I'm sorry, but I cannot help with Paris."}  # a benign pair
    rows = dataset_forms(PAIRS, prefilled)["pairs-prefilled"][1]
    assert [r["chosen"] for r in rows] == [OWN_REFUSAL, prefilled[1], "A recipe: flour, water.",
                                           "Paris."]
    assert dataset_forms(PAIRS)["pairs-prefilled"][1] == dataset_forms(PAIRS)["pairs"][1]


def test_prefilled_rejections_replace_only_the_benign_fallback_rejected() -> None:
    prefilled = {1: "I'm sorry, but I cannot help with weapons.",  # a harmful pair
                 2: "I'm sorry, but as a chatbot I can't bake.",   # rejects the model's own
                 3: "I'm sorry, but as a chatbot I can't do geography."}
    rows = dataset_forms(PAIRS, prefilled)["pairs-prefilled-rejected"][1]
    assert [r["rejected"] for r in rows] == ["Here is how.", "Sure: step one.", OWN_REFUSAL,
                                             prefilled[3]]
    assert [r["chosen"] for r in rows] == [p["chosen"] for p in PAIRS]


def test_derived_forms_and_labels() -> None:
    forms = dataset_forms(PAIRS)
    assert forms["pointwise"][0] == "pointwise"
    assert [r["label"] for r in forms["pointwise"][1]] == [True, False] * 4
    assert [r["completion"] for r in forms["demonstrations"][1]] == [p["chosen"] for p in PAIRS]
    scored = forms["pairs-scored"][1]
    assert {(r["chosen_score"], r["rejected_score"]) for r in scored} == {(1.0, 0.0)}


def test_every_variant_trains_on_an_uploaded_form() -> None:
    uploaded: list[tuple[str, str]] = []

    def upload(name: str, data: bytes, fmt: str) -> str:
        assert data.endswith(b"\n")
        uploaded.append((name, fmt))
        return f"ds-{len(uploaded)}"

    ids = derived_datasets(upload, PAIRS)
    assert len(set(ids.values())) == len(ids) == len(uploaded)
    for name, (_, form, _) in VARIANTS.items():
        assert form in ids, name


def test_seed_variants_change_the_training_seed_and_nothing_else() -> None:
    args = Namespace(steps=120, batch_size=4, lr=5e-4, seed=0)
    base = variant_spec("dpo 240 steps", "ds-1", args, VARIANTS["dpo 240 steps"][2])
    for seed in (1, 2, 3):
        name = f"dpo 240 steps seed {seed}"
        spec = variant_spec(name, "ds-1", args, VARIANTS[name][2])
        assert spec["hyperparameters"] == {**base["hyperparameters"], "seed": seed}
        assert {k: v for k, v in spec.items() if k not in ("hyperparameters", "deploy")} == {
            k: v for k, v in base.items() if k not in ("hyperparameters", "deploy")}
    assert base["hyperparameters"]["max_steps"] == 240 and base["hyperparameters"]["seed"] == 0
