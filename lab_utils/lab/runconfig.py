"""One run's configuration, resolved once: profile + hardware + every override -> a frozen `RunConfig`.

Notebook 02 records the configuration it trained with; notebooks 03, 04 and 05 read what 02 trained (`trained()`)
instead of deriving it again from the profile, so two notebooks cannot disagree about the method, the data or the
model folders.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from typing import Any

from lab_utils.core.hardware import Hardware, probe
from lab_utils.core.paths import repo_path
from lab_utils.core.profiles import Profile, choose_profile, get_profile
from lab_utils.core.results import find_section, load_results
from lab_utils.data.alpaca import clean, is_hub_id, load_heldout
from lab_utils.lab.readiness import require
from lab_utils.models import rehearsal
from lab_utils.models.loading import EvalLoad, eval_load, resolve_model_path
from lab_utils.serve.engines import resolve as resolve_engine
from lab_utils.serve.vllm import spec_for
from lab_utils.train.sft import split_for_training

# Class mode, for a workshop: the same story in less time. Training stays a fixed number of steps (100: the pocket
# profile's own count, and a short GPU workshop run); the benchmark, the memory sweep, the load test and the comparison
# are trimmed. One switch, LAB_CLASS=1: `make lab QUICK=1` sets it for every notebook, and a Jupyter session started
# with it (`LAB_CLASS=1 make jupyter`) gets the same values. Each notebook's parameters by the prefix of its name.
CLASS_ENV = "LAB_CLASS"
# A rehearsal: a GPU profile's flow on this machine with stand-ins, decided for its GPU (`make lab REHEARSAL=1`).
REHEARSAL_ENV = "LAB_REHEARSAL"
CLASS_MODE: dict[str, dict[str, Any]] = {
    "02": {"max_steps": 100, "benchmark_steps": 8},
    "03": {"configs": "1,3,5,7,8"},
    "04": {"concurrency_levels": [1, 8], "compare_lora": False},
    "05": {"n_prompts": 40},
}


def class_mode() -> bool:
    """True when class mode is on: LAB_CLASS set to anything but "" or "0"."""
    return os.environ.get(CLASS_ENV, "") not in ("", "0")


def for_class(notebook: str, **given: Any) -> tuple[Any, ...]:
    """The given parameters in order, each replaced by class mode's value where class mode is on and the parameter still
    holds its parameters-cell default: a value you typed, or one papermill injected, wins."""
    changes = CLASS_MODE.get(notebook[:2], {}) if class_mode() else {}
    if not changes:
        return tuple(given.values())
    defaults = notebook_defaults(notebook[:2])
    return tuple(changes[k] if k in changes and defaults.get(k) == v else v for k, v in given.items())


def notebook_defaults(prefix: str) -> dict[str, Any]:
    """The values a notebook's `parameters` cell declares, by name (from the notebook file, as papermill reads it)."""
    import ast

    import papermill as pm

    (path,) = sorted(repo_path("notebooks").glob(f"{prefix}_*.ipynb"))
    return {name: ast.literal_eval(p["default"]) for name, p in pm.inspect_notebook(str(path)).items()}


@dataclass(frozen=True)
class RunConfig:
    """The profile with this run's overrides applied, the hardware it runs on, and the run-wide knobs."""

    profile: Profile
    hardware: Hardware
    requested: str  # the profile name asked for ("auto" included)
    reason: str  # why this profile
    max_new_tokens: int  # generation limit for before/after answers
    n_prompts: int  # held-out prompts to use; 0: all
    start_timeout_s: float  # seconds to wait for a vLLM server's /health
    # A rehearsal runs a GPU profile's flow on this machine with small stand-ins of its model and data (LAB_REHEARSAL=1);
    # decisions about memory and features are then made for `target`, the GPU the profile is made for.
    rehearsal: bool = False
    target: Hardware | None = None
    own_dataset: bool = False  # the training data is not the profile's own (DATASET= or a `dataset` parameter)
    engine_choice: str = "auto"  # the serving engine asked for: auto | vllm | llamacpp (decided by `engine`)
    class_mode: bool = False  # LAB_CLASS=1: the workshop's shorter values (`CLASS_MODE`, applied by `for_class`)

    @property
    def engine(self) -> Any:
        """The serving engine (`engines.VLLM` or `engines.LlamaCpp`) for `engine_choice`: "auto" is vLLM where it
        is installed, else llama.cpp. Decided when a notebook first asks (00-03 serve nothing and need neither)."""
        return resolve_engine(self.engine_choice)

    @property
    def decision_hardware(self) -> Hardware:
        """The hardware memory and feature decisions are made for: the profile's target GPU in a rehearsal, else this
        machine."""
        return self.target or self.hardware

    @property
    def eval_load(self) -> EvalLoad:
        """How a model loads to be evaluated here: fp32 on a CPU, 16-bit on a GPU, NF4 for a QLoRA profile (as it
        trained: a 16-bit 8B does not fit the 16 GB GPU it is for)."""
        return eval_load(self.hardware, self.decision_hardware, self.profile.evaluates_in_4bit)

    def trained(self, merged_dir: str = "", adapter_dir: str = "") -> TrainedRun:
        """What 02 trained for this run's profile and rehearsal flag (see `trained`)."""
        return trained(merged_dir, adapter_dir, profile=self.profile)

    def require_ready(self) -> None:
        """Stop with the fixes when this machine cannot run the profile (`readiness.require`). A rehearsal runs a GPU
        profile on this machine on purpose, with local stand-ins: it checks nothing that only the real run needs."""
        if self.rehearsal:
            print(
                f"rehearsal of {self.name} for {self.decision_hardware.name}: stand-in model and data, this machine's "
                f"{self.hardware.device}; the GPU, licence and download checks are for the real run"
            )
            return
        require(self.profile, self.hardware)

    @property
    def name(self) -> str:
        """The profile's name."""
        return self.profile.name

    @property
    def is_pocket(self) -> bool:
        """True for the profile whose base model the lab builds and ships."""
        return self.profile.is_pocket

    @property
    def method(self) -> str:
        """lora | qlora | full."""
        return self.profile.train.method

    @property
    def dataset(self) -> str:
        """The training data: hub id or local path."""
        return self.profile.dataset

    def base_model_path(self) -> str:
        """The base model's local folder (the pocket model) or hub id."""
        return resolve_model_path(self.profile)

    def heldout(self) -> list[dict[str, Any]]:
        """The held-out prompts with reference answers (the first `n_prompts`, or all). On a hub-data profile: the
        heldout file's verifiable questions (scored by contains-answer: their reference sentences are in the pocket
        data's style) and records of the dataset's own eval split, never trained on (scored by ROUGE-L and BLEU
        against their Alpaca references), half of `n_prompts` each."""
        if self.own_dataset:  # your data: its own held-out split, never trained on
            _, evals, _ = split_for_training(self.profile)
            held = [{**clean(r), "kind": "dataset"} for r in evals]
            return held[: self.n_prompts] if self.n_prompts else held
        records = load_heldout(self.profile.heldout)
        if not self.profile.heldout_from_dataset:
            return records[: self.n_prompts] if self.n_prompts else records
        questions = [{**r, "kind": "verifiable"} for r in records if r.get("answer")]
        _, evals, _ = split_for_training(self.profile)
        held = [{**clean(r), "kind": "dataset"} for r in evals[: self.profile.heldout_from_dataset]]
        if self.n_prompts:
            n_held = self.n_prompts // 2
            questions, held = questions[: self.n_prompts - n_held], held[:n_held]
        return questions + held

    @property
    def heldout_source(self) -> str:
        """Where `heldout()` takes its records from, in words."""
        if self.own_dataset:
            return f"the held-out split of {self.dataset}"
        extra = (
            f" and {self.profile.heldout_from_dataset} of {self.dataset}'s eval split"
            if self.profile.heldout_from_dataset
            else ""
        )
        return f"{self.profile.heldout}{extra}"

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, recorded with the run."""
        out = asdict(self)
        out["hardware"] = self.hardware.to_dict()
        out["target"] = self.target.to_dict() if self.target else None
        return out


def resolve(
    profile: str = "auto",
    hardware: Hardware | None = None,
    *,
    method: str = "",
    max_steps: int = 0,
    lora_r: int = 0,
    dataset: str = "",
    max_new_tokens: int = 0,
    n_prompts: int = 0,
    start_timeout_s: float = 0,
    engine: str = "auto",
) -> RunConfig:
    """Probe the hardware once, pick the profile ("auto" by hardware) and apply every override; empty or 0 keeps the
    profile's own value."""
    hw = hardware if hardware is not None else probe()
    if profile == "auto":
        name, reason = choose_profile(hw)
    else:
        name, reason = profile, "asked for by name"
    prof = get_profile(name)
    asked = os.environ.get(REHEARSAL_ENV, "").strip().lower() in ("1", "true", "yes")
    rehearsing = asked and not prof.is_pocket
    if rehearsing:
        prof = rehearsal.scaled(prof)
        reason += "; rehearsal with stand-ins (LAB_REHEARSAL=1)"
    prof = prof.with_overrides(method, max_steps)
    if lora_r:
        prof = prof.with_train(lora_r=lora_r)
    own = bool(dataset) and not _same_source(dataset, prof.dataset)
    if own:
        prof = replace(prof, dataset=dataset)
    return RunConfig(
        profile=prof,
        hardware=hw,
        requested=profile,
        reason=reason,
        max_new_tokens=max_new_tokens or prof.max_new_tokens,
        n_prompts=n_prompts,
        start_timeout_s=start_timeout_s or prof.serve.start_timeout_s,
        rehearsal=rehearsing,
        target=rehearsal.target_hardware(prof) if rehearsing else None,
        own_dataset=own,
        engine_choice=engine,
        class_mode=class_mode(),
    )


def _same_source(a: str, b: str) -> bool:
    """True when two dataset names are one source (a hub id, or one local file however its path is written)."""
    if is_hub_id(a) or is_hub_id(b):
        return a == b
    return repo_path(a).resolve() == repo_path(b).resolve()


@dataclass(frozen=True)
class TrainedRun:
    """What notebook 02 trained: read back by 03, 04 and 05."""

    method: str
    dataset: str
    base_model: str
    adapter_dir: str
    merged_dir: str  # "" where the profile serves the adapter beside the base instead of merging (70B)
    lora_r: int

    @property
    def has_adapter(self) -> bool:
        """True when training produced a LoRA/QLoRA adapter (not a full model)."""
        return self.method != "full"

    @property
    def merged(self) -> bool:
        """True when 02 wrote a merged model folder (transformers can load and evaluate it)."""
        return bool(self.merged_dir)

    def finetuned_spec(self, profile: Profile, hardware: Hardware, name: str, **changes: Any) -> Any:
        """The vLLM server settings that serve the fine-tuned model as `name`: the merged folder with its training
        template, or, without a merged folder, the base with the adapter beside it (--enable-lora) under that name."""
        from pathlib import Path

        if self.merged:
            template = str(Path(self.merged_dir) / "chat_template.jinja")
            return spec_for(profile, hardware, self.merged_dir, name, chat_template=template, **changes)
        template = str(Path(self.adapter_dir) / "chat_template.jinja")
        return spec_for(
            profile,
            hardware,
            self.base_model,
            "base",
            chat_template=template,
            lora_modules={name: self.adapter_dir},
            max_lora_rank=self.lora_r,
            **changes,
        )


def trained(merged_dir: str = "", adapter_dir: str = "", profile: Profile | None = None) -> TrainedRun:
    """What 02 trained, all from one run (this one, or the newest earlier run with an adapter folder; with `profile`,
    only a run of that profile, rehearsal flag and training data); explicit folders win."""
    if profile is not None:
        recorded = find_section(
            "02_sft", "adapter_dir", profile=profile.name, rehearsal=profile.rehearsal, dataset=profile.dataset
        )
    else:
        recorded = find_section("02_sft", "adapter_dir")
    train = recorded["run_config"]["profile"]["train"]
    return TrainedRun(
        method=train["method"],
        dataset=recorded["run_config"]["profile"]["dataset"],
        base_model=recorded["base_model"],
        adapter_dir=adapter_dir or recorded["adapter_dir"],
        merged_dir=merged_dir or recorded.get("merged_dir") or "",
        lora_r=int(train["lora_r"]),
    )


def dataset_from_01() -> str:
    """The dataset notebook 01 of this run loaded (so 02 trains on what 01 showed), or "" when 01 has not run here."""
    return str(load_results().get("01_alpaca_data", {}).get("dataset") or "")
