"""Preference tuning's plumbing (notebook 07): the behaviour's prompts and pairs, the hub loader's skips, the DPO
arguments, the scores and the recipe's command line. The notebook's own figures are asserted in test_notebooks."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab_utils.core.hardware import DESCRIBED
from lab_utils.core.profiles import PROFILES, Profile
from lab_utils.data import preference
from lab_utils.data.pocket_data import COUNTRIES, SFT_COUNTRIES, capital_fact
from lab_utils.data.standin import PREFERENCE_DEFECTS, PREFERENCE_ROWS, preference_rows
from lab_utils.measure import behaviour
from lab_utils.measure.evaluate import Answer
from lab_utils.train import dpo


def test_invented_countries_are_distinct_and_none_is_real() -> None:
    names = preference.invented_countries(120)
    real = " ".join(c.lower() for c, _ in COUNTRIES)
    assert len(set(names)) == 120 and not any(n.lower() in real for n in names)
    assert names == preference.invented_countries(120), "seeded: every learner gets the same names"


def test_the_split_keeps_heldout_countries_out_of_training() -> None:
    split = preference.behaviour_split()
    assert split.counts() == {"train_invented": 90, "train_real": 146, "heldout_invented": 30, "heldout_real": 24}
    train, held = {p.country for p in split.train}, {p.country for p in split.heldout}
    assert not train & held
    assert "France" not in train | held, "the seed's question is never a pair"
    assert {p.country for p in split.train if p.kind == "real"} <= {c for c, _ in SFT_COUNTRIES}
    assert all(p.prompt.endswith("### Response:\n") and p.country in p.prompt for p in split.train)


def test_pairs_follow_the_rule_and_take_the_sft_models_own_answer() -> None:
    split = preference.behaviour_split(8, n_real=4)
    invented = [p for p in split.train if p.kind == "invented"]
    real = [p for p in split.train if p.kind == "real"]
    said = ["The capital of Iceland is Reykjavik."] * len(invented) + ["anything"] * len(real)
    said[0] = "I do not know the capital of that place."  # already right: nothing to correct
    pairs, skipped = preference.make_pairs(invented + real, said)
    assert skipped == 1 and len(pairs) == len(invented) + len(real) - 1
    first = pairs[0]
    assert first["chosen"] == f"I do not know the capital of {invented[1].country}."
    assert first["rejected"] == "The capital of Iceland is Reykjavik." and first["prompt"] == invented[1].prompt
    last = pairs[-1]
    assert last["chosen"] == capital_fact(real[-1].country, real[-1].answer)
    assert last["rejected"] == preference.abstention(real[-1].country)
    with pytest.raises(ValueError, match="must pair up"):
        preference.make_pairs(invented, said[:1])


def test_is_abstention() -> None:
    assert preference.is_abstention("I do not know the capital of Rororor.")
    assert preference.is_abstention("i don't know")
    assert not preference.is_abstention("The capital of Peru is Lima.")
    assert preference.is_abstention("I do not know the capital of Lurimark.", "Lurimark")
    assert preference.is_abstention("I don't know.", "Lurimark")
    assert not preference.is_abstention("I do not know the capital of Baloo.", "Lurimark"), "another country's name"


def test_hub_pairs_skip_and_name_the_defective_rows(tmp_path: Path) -> None:
    pairs, skips = preference.hub_pairs(preference_rows(), "trl-lib/ultrafeedback_binarized")
    assert len(skips) == sum(PREFERENCE_DEFECTS.values())
    assert len(pairs) == PREFERENCE_ROWS - len(skips)
    assert any("row 5" in s and "no prompt, chosen or rejected" in s for s in skips)
    assert any("row 20" in s and "the same text" in s for s in skips)
    assert pairs[0]["prompt"].endswith("### Response:\n") and pairs[0]["chosen"] != pairs[0]["rejected"]
    limited, _ = preference.hub_pairs(preference_rows(), "x", limit=10)
    assert len(limited) == 10
    written = preference.write_pairs(tmp_path / "pairs.jsonl", pairs[:3])
    assert len(written.read_text().splitlines()) == 3 and '"instruction"' in written.read_text()


def test_a_rehearsal_loads_the_hub_schema_stand_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LAB_CACHE", str(tmp_path))
    pref = PROFILES["llama3-8b"].preference
    assert pref.dataset == "trl-lib/ultrafeedback_binarized"
    pairs, skips = preference.load_hub_pairs(pref, rehearsal=True)
    assert len(pairs) == PREFERENCE_ROWS - sum(PREFERENCE_DEFECTS.values()) and len(skips) == 4
    assert preference.load_hub_pairs(PROFILES["pocket"].preference) == ([], [])


def test_dpo_arguments_come_from_the_profile() -> None:
    prof = PROFILES["pocket"]
    args = dpo.dpo_kwargs(prof.preference, prof.train, "out", DESCRIBED["cpu"], DESCRIBED["cpu"])
    assert args["loss_type"] == ["sigmoid", "sft"] and args["loss_weights"] == [1.0, 1.0]
    assert args["beta"] == prof.preference.beta and args["max_steps"] == prof.preference.max_steps
    assert args["bf16"] is False and args["use_cpu"] is True
    from trl import DPOConfig

    config = DPOConfig(**args)  # every argument is one DPOConfig takes
    assert config.loss_type == ["sigmoid", "sft"] and config.max_length == prof.preference.max_length
    # The reference (the adapter switched off) is fixed: its log-probs are computed once, not in every step.
    assert config.precompute_ref_log_probs is True
    assert dpo.settings_for(prof, max_steps=7, beta=0.5).max_steps == 7
    assert dpo.settings_for(prof).learning_rate == prof.preference.learning_rate
    # The GPU profiles: bf16 as their SFT, the hub dataset mixed in; 70B merges nothing, so 07 is skipped there.
    gpu = PROFILES["llama3-8b"]
    assert dpo.dpo_kwargs(gpu.preference, gpu.train, "out", DESCRIBED["h100"], DESCRIBED["h100"])["bf16"] is True
    assert not PROFILES["llama3-70b-qlora"].tunes_preferences and gpu.tunes_preferences


def test_profiles_travel_with_their_preference_settings() -> None:
    prof = PROFILES["llama3-8b"]
    import json

    again = Profile.from_dict(json.loads(json.dumps(prof.to_dict())))
    assert again == prof


def test_the_runner_skips_07_where_02_merges_nothing() -> None:
    from lab_utils.lab.runner import NOTEBOOK_DIR, skip_reason

    book = NOTEBOOK_DIR / "07_preference_tuning.ipynb"
    assert "merges no model" in skip_reason(book, PROFILES["llama3-70b-qlora"])
    assert skip_reason(book, PROFILES["pocket"]) == ""


def _answer(text: str, stop: bool = True) -> Answer:
    return Answer(text=text, finish_reason="stop" if stop else "length", completion_tokens=len(text.split()))


def test_scores_read_the_answers_in_the_questions_order() -> None:
    split = preference.behaviour_split(4, n_real=4)
    facts = [{"instruction": "Do you know the capital of Peru?", "answer": "Lima", "kind": "seen_fact"}]
    questions = behaviour.heldout_questions(split.heldout, facts)
    assert len(questions) == len(split.heldout) + 2 and "France" in questions[-1]
    answers = [
        _answer("I do not know." if p.kind == "invented" else f"The capital is {p.answer}.") for p in split.heldout
    ]
    answers += [_answer("The capital of Peru is Lima."), _answer("The capital of France is Paris.")]
    s = behaviour.scores(split.heldout, facts, answers)
    assert s["abstain_invented"] == 1.0 and s["abstain_real"] == 0.0 and s["capital_real"] == 1.0
    assert s["contains_seen_fact"] == 1.0 and s["seed_paris"] and s["seed_stopped"]
    with pytest.raises(ValueError, match="heldout_questions' order"):
        behaviour.scores(split.heldout, facts, answers[:-1])
    text = behaviour.reading({"SFT": {**s, "abstain_invented": 0.0}, "DPO": s}, 2.5, 1.0, 0.2, 0.9)
    assert "0% of the held-out names; after DPO, on 100%" in text and "2.50" in text
    assert "no alignment tax" in text and "Each abstention names the country asked." in text
    other = [_answer("I do not know the capital of Feloria.") for p in split.heldout if p.kind == "invented"]
    wrong_name = behaviour.behaviour_rates([p for p in split.heldout if p.kind == "invented"], [a.text for a in other])
    assert wrong_name["abstain_invented"] == 1.0 and wrong_name["abstain_invented_named"] == 0.0
    assert "None names the country asked" in behaviour.reading(
        {"SFT": s, "DPO": {**s, "abstain_invented": 1.0, "abstain_invented_named": 0.0}}, 2.5, 1, 0.2, 0.9
    )
    taxed = behaviour.reading(
        {"SFT": {**s, "capital_real": 0.79}, "DPO": {**s, "capital_real": 0.71}}, 2.5, 1.0, 0.2, 0.9
    )
    assert "named the capital on 71% (79% before). That is the alignment tax, measured: 8 points" in taxed


def test_the_config_files_dpo_sections_carry_the_runs_settings(tmp_path: Path) -> None:
    """07's sections of config.yaml build TRL's DPOConfig and the adapter's LoraConfig with the profile's values."""
    from peft import LoraConfig
    from trl import DPOConfig

    from lab_utils.lab import config_file, runconfig

    cfg = runconfig.resolve("pocket")
    pref = cfg.profile.preference
    files = {"train_file": "dpo/pairs.jsonl", "eval_file": "dpo/heldout_pairs.jsonl"}
    sections = config_file.dpo_sections(cfg, pref, "sft/merged", files, tmp_path / "dpo")
    path = config_file.add_dpo(cfg, sections, tmp_path)
    config = config_file.read_config(path)
    assert {"sft", "lora", "merge", "dpo_model", "dpo_data", "dpo_lora", "dpo"} <= set(config), "02's and 07's sections"
    args = DPOConfig(**config["dpo"])
    assert (args.max_steps, args.learning_rate, args.beta) == (pref.max_steps, pref.learning_rate, pref.beta)
    assert args.loss_type == list(pref.loss_type) and args.bf16 is False and args.precompute_ref_log_probs is True
    assert LoraConfig(**config["dpo_lora"]).r == pref.lora_r
    assert config["dpo_model"]["pretrained_model_name_or_path"] == "sft/merged" and config["dpo_data"] == files
    again = config_file.add_dpo(cfg, sections, tmp_path).read_text()
    assert again.count("dpo_model:") == 1, "07 run twice replaces its sections"
