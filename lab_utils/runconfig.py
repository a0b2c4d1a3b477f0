"""One run's configuration, resolved once: profile + hardware + every override -> a frozen `RunConfig`.

Notebook 02 records the configuration it trained with; notebooks 03, 04 and 05 read what 02 trained (`trained()`)
instead of deriving it again from the profile, so two notebooks cannot disagree about the method, the data or the
model folders.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from lab_utils.hardware import Hardware
from lab_utils.profiles import Profile, choose_profile, get_profile


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
        from lab_utils.models import resolve_model_path

        return resolve_model_path(self.profile)

    def heldout(self) -> list[dict[str, Any]]:
        """The held-out prompts with reference answers (the first `n_prompts`, or all)."""
        from lab_utils.data import load_heldout

        records = load_heldout(self.profile.heldout)
        return records[: self.n_prompts] if self.n_prompts else records

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, recorded with the run."""
        out = asdict(self)
        out["hardware"] = self.hardware.to_dict()
        return out


def resolve(
    profile: str = "auto",
    hardware: Hardware | None = None,
    *,
    method: str = "",
    max_steps: int = 0,
    dataset: str = "",
    max_new_tokens: int = 0,
    n_prompts: int = 0,
    start_timeout_s: float = 0,
) -> RunConfig:
    """Probe the hardware once, pick the profile ("auto" by hardware) and apply every override; empty or 0 keeps the
    profile's own value."""
    from lab_utils.hardware import probe

    hw = hardware if hardware is not None else probe()
    if profile == "auto":
        name, reason = choose_profile(hw)
    else:
        name, reason = profile, "asked for by name"
    prof = get_profile(name).with_overrides(method, max_steps)
    if dataset:
        prof = replace(prof, dataset=dataset)
    return RunConfig(
        profile=prof,
        hardware=hw,
        requested=profile,
        reason=reason,
        max_new_tokens=max_new_tokens or prof.max_new_tokens,
        n_prompts=n_prompts,
        start_timeout_s=start_timeout_s or prof.serve.start_timeout_s,
    )


@dataclass(frozen=True)
class TrainedRun:
    """What notebook 02 trained: read back by 03, 04 and 05."""

    method: str
    dataset: str
    base_model: str
    adapter_dir: str
    merged_dir: str
    lora_r: int

    @property
    def has_adapter(self) -> bool:
        """True when training produced a LoRA/QLoRA adapter (not a full model)."""
        return self.method != "full"


def trained(merged_dir: str = "", adapter_dir: str = "") -> TrainedRun:
    """What 02 trained, all from one run (this one, or the newest earlier run with a merged model); explicit folders
    win."""
    from lab_utils.results import find_section

    recorded = find_section("02_sft", "merged_dir")
    train = recorded["run_config"]["profile"]["train"]
    return TrainedRun(
        method=train["method"],
        dataset=recorded["run_config"]["profile"]["dataset"],
        base_model=recorded["base_model"],
        adapter_dir=adapter_dir or recorded["adapter_dir"],
        merged_dir=merged_dir or recorded["merged_dir"],
        lora_r=int(train["lora_r"]),
    )


def dataset_from_01() -> str:
    """The dataset notebook 01 of this run loaded (so 02 trains on what 01 showed), or "" when 01 has not run here."""
    from lab_utils.results import load_results

    return str(load_results().get("01_alpaca_data", {}).get("dataset") or "")
