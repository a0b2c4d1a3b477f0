"""Named, typed profiles: which model, data and hyperparameters a run uses."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from lab_utils.core.hardware import Hardware

Method = Literal["lora", "qlora", "full"]


@dataclass(frozen=True)
class TrainSettings:
    """Hyperparameters of one supervised fine-tuning run."""

    method: Method = "lora"
    max_steps: int = 300
    learning_rate: float = 2e-4
    per_device_batch_size: int = 4
    eval_batch_size: int = 0  # per device, for the eval loss (no gradients, so larger); 0: per_device_batch_size
    gradient_accumulation_steps: int = 4
    max_seq_length: int = 512
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    bf16: bool = True
    gradient_checkpointing: bool = True
    optim: str = "adamw_torch"
    logging_steps: int = 10
    eval_steps: int = 50
    save_steps: int = 100
    # How batches avoid wasting compute on padding: "padding_free" (examples concatenated, told apart by position
    # ids: best with FlashAttention on a GPU), "group_by_length" (batches of similar lengths, padded to their longest:
    # best on a CPU, measured in notebook 02), "padded" (the naive baseline) or "auto" (by hardware).
    batching: str = "auto"
    seed: int = 42


@dataclass(frozen=True)
class PreferenceSettings:
    """Preference tuning (notebook 07): DPO with a LoRA adapter on the SFT model."""

    # A hub preference dataset mixed into the lab's own pairs ("" for the lab's pairs alone), and how many of its rows.
    dataset: str = ""
    dataset_rows: int = 0
    beta: float = 0.1  # how far the policy may move from the reference: larger keeps it closer
    # DPO's sigmoid loss plus an SFT term on the chosen answers (TRL's loss_type=["sigmoid", "sft"]): without it the
    # reward margin rises while greedy answers stay as they were (measured on pocket: abstention 0.00 -> 0.00).
    loss_type: tuple[str, ...] = ("sigmoid", "sft")
    loss_weights: tuple[float, ...] = (1.0, 1.0)
    learning_rate: float = 5e-5
    max_steps: int = 200
    per_device_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 512
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    logging_steps: int = 10
    save_steps: int = 100
    # The reference (the adapter switched off) never changes: its log-probabilities are computed once per pair before
    # training instead of in every step (TRL's precompute_ref_log_probs; pocket: a step about a third faster, 07's
    # 150 steps 37 -> 29-31 s, the same margins and losses).
    precompute_ref: bool = True


@dataclass(frozen=True)
class ServeSettings:
    """How vLLM serves the profile's models."""

    dtype: str = "bfloat16"
    max_model_len: int = 2048
    max_num_seqs: int = 64
    gpu_memory_utilization: float = 0.80
    quantization: Literal["auto", "none"] = "auto"  # auto: FP8 where the hardware supports it
    cpu_kvcache_space_gb: int = 1
    # vLLM's --enforce-eager (no torch.compile, no CUDA graphs). None decides by hardware: eager on a CPU, where a
    # compiled start took about twice as long (three starts: 55 s against 26 s) for a model this small, so the
    # compile costs more than it returns in a lab's few hundred requests; compiled on a GPU, where CUDA graphs pay back.
    enforce_eager: bool | None = None
    start_timeout_s: float = 900.0
    # Requests that name no temperature are decoded at this one (vLLM's own default is to sample at 1.0):
    # 0.0 makes the lab's before/after answers greedy and reproducible. None keeps vLLM's default.
    default_temperature: float | None = 0.0


@dataclass(frozen=True)
class ModelDims:
    """The shape of a Llama-style decoder: enough to count its parameters and activations."""

    n_layers: int
    hidden: int
    intermediate: int
    n_heads: int
    n_kv_heads: int
    vocab: int
    tie_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.hidden // self.n_heads

    def projection_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear projection in one decoder layer."""
        q_out, kv_out = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        return {
            "q_proj": (self.hidden, q_out),
            "k_proj": (self.hidden, kv_out),
            "v_proj": (self.hidden, kv_out),
            "o_proj": (q_out, self.hidden),
            "gate_proj": (self.hidden, self.intermediate),
            "up_proj": (self.hidden, self.intermediate),
            "down_proj": (self.intermediate, self.hidden),
        }

    def linear_params(self) -> int:
        """Parameters in all layers' linear projections (the LoRA and 4-bit quantization targets)."""
        return self.n_layers * sum(i * o for i, o in self.projection_shapes().values())

    def embedding_params(self) -> int:
        """Input embeddings plus lm_head (one matrix when tied)."""
        return self.vocab * self.hidden * (1 if self.tie_embeddings else 2)

    def norm_params(self) -> int:
        """RMSNorm weights: two per layer and the final norm."""
        return (2 * self.n_layers + 1) * self.hidden

    def n_params(self) -> int:
        """Exact parameter count of a bias-free Llama with these dimensions."""
        return self.linear_params() + self.embedding_params() + self.norm_params()

    @classmethod
    def from_config(cls, config: Any) -> ModelDims:
        """Dimensions from a transformers LlamaConfig (or any object with the same attributes)."""
        dims = cls(
            n_layers=int(config.num_hidden_layers),
            hidden=int(config.hidden_size),
            intermediate=int(config.intermediate_size),
            n_heads=int(config.num_attention_heads),
            n_kv_heads=int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads),
            vocab=int(config.vocab_size),
            tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        )
        head_dim = getattr(config, "head_dim", None)
        if head_dim is not None and int(head_dim) != dims.head_dim:
            raise ValueError(f"head_dim {head_dim} != hidden/n_heads {dims.head_dim}: not supported by ModelDims")
        return dims


@dataclass(frozen=True)
class ModelFacts:
    """What the lab knows about a profile's base model: its short name in tables, its shape (for the memory estimator
    and the calculator), and the disk its download and checkpoints take."""

    name: str
    dims: ModelDims
    download_gb: float


@dataclass(frozen=True)
class Profile:
    """Everything a notebook needs to know about one way of running the lab."""

    name: str
    description: str
    base_model: str  # hub id, or "pocket" for the model the lab builds itself
    dataset: str  # hub id or local path of Alpaca-format data
    heldout: str  # local path of held-out prompts with reference answers
    needs_gpu: bool
    min_memory_gb: float  # GPU memory (or unified memory) the profile needs
    gated: bool = False  # the hub model needs an accepted licence and HF_TOKEN
    train: TrainSettings = field(default_factory=TrainSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)
    preference: PreferenceSettings = field(default_factory=PreferenceSettings)
    max_new_tokens: int = 500
    eval_fraction: float = 0.05
    max_eval_examples: int = 500  # cap on the eval split: 5% of Alpaca is ~2,600 examples, evaluated every eval_steps
    # Hub-data profiles also hold out this many of the dataset's eval records for notebook 05 (scored with ROUGE-L
    # and BLEU against their Alpaca references); the `heldout` file's questions are then scored by contains-answer only.
    heldout_from_dataset: int = 0
    # Merge the adapter for serving and evaluate with transformers (02, 04). False where a 16-bit copy of the model
    # cannot fit (70B: ~141 GB in bf16): vLLM then serves the FP8 base with the adapter beside it (--enable-lora).
    merge_for_serving: bool = True
    # `make lab`'s limit for one notebook cell, in seconds: generous for a pocket run (so a hung cell is caught), none
    # for the GPU profiles, whose training cell runs for hours. The tests set their own, tighter limits.
    cell_timeout_s: int | None = None
    # A rehearsal's copy of a GPU profile (`models.rehearsal.scaled`): its hub model and dataset load as local
    # stand-ins. Set once when the run configuration is resolved, and passed down with the profile.
    rehearsal: bool = False
    # The per-model facts (None for the pocket model, whose config the lab reads), and the described GPU a rehearsal
    # of this profile makes its memory and feature decisions for (a key of hardware.DESCRIBED; "" when not rehearsed).
    model: ModelFacts | None = None
    rehearsal_target: str = ""

    @property
    def evaluates_in_4bit(self) -> bool:
        """QLoRA profiles evaluate with transformers in 4-bit, as they trained: a 16-bit copy of an 8B model (16 GB)
        does not fit the 16 GB GPU the QLoRA profile is for."""
        return self.train.method == "qlora" and not self.is_pocket

    @property
    def tunes_preferences(self) -> bool:
        """Notebook 07 runs DPO on 02's merged model: profiles that merge nothing (70B) skip it."""
        return self.merge_for_serving

    @property
    def is_pocket(self) -> bool:
        """True for the profile whose base model the lab builds and ships (the one place this is decided)."""
        return self.base_model == "pocket"

    def with_train(self, **changes: Any) -> Profile:
        """A copy of this profile with some training settings changed."""
        return replace(self, train=replace(self.train, **changes))

    def with_overrides(self, method: str = "", max_steps: int = 0) -> Profile:
        """A copy with the given training method and step count; empty or 0 keeps the profile's own."""
        changes = {k: v for k, v in {"method": method, "max_steps": max_steps}.items() if v}
        return self.with_train(**changes) if changes else self

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, for recording with a run."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Profile:
        """The profile `to_dict` wrote (to hand it to another process)."""
        model = d.get("model")
        facts = ModelFacts(model["name"], ModelDims(**model["dims"]), model["download_gb"]) if model else None
        pref = {k: tuple(v) if isinstance(v, list) else v for k, v in d.get("preference", {}).items()}
        return cls(
            **{
                **d,
                "train": TrainSettings(**d["train"]),
                "serve": ServeSettings(**d["serve"]),
                "preference": PreferenceSettings(**pref),
                "model": facts,
            }
        )


PREFERENCE_DATASET = "trl-lib/ultrafeedback_binarized"  # the GPU profiles' hub preference data (07)
PROFILES_DIR = Path(__file__).resolve().parents[2] / "configs" / "profiles"
# Where a profile file's library-named arguments go in the dataclasses: (section, argument) -> (settings, field).
SECTIONS: dict[str, str] = {"lora": "train", "sft": "train", "dpo": "preference", "dpo_lora": "preference",
                            "dpo_data": "preference", "serve": "serve"}  # fmt: skip
RENAMED: dict[tuple[str, str], str] = {
    ("lora", "r"): "lora_r",
    ("sft", "per_device_train_batch_size"): "per_device_batch_size",
    ("sft", "per_device_eval_batch_size"): "eval_batch_size",
    ("sft", "max_length"): "max_seq_length",
    ("dpo", "per_device_train_batch_size"): "per_device_batch_size",
    ("dpo", "precompute_ref_log_probs"): "precompute_ref",
    ("dpo_lora", "r"): "lora_r",
}
SETTINGS = {"train": TrainSettings, "preference": PreferenceSettings, "serve": ServeSettings}


class ProfileError(ValueError):
    """A profile file the lab cannot use; the message names the file and the key."""


def profile_from_file(path: Path) -> Profile:
    """One profile from its YAML file (configs/profiles/NAME.yaml): sections named after the calls they feed, with the
    libraries' own argument names; a value left out keeps the dataclass default."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: not a mapping of settings")
    parts: dict[str, dict[str, Any]] = {"train": {}, "preference": {}, "serve": {}}
    for section, target in SECTIONS.items():
        for key, value in (data.pop(section, None) or {}).items():
            parts[target][RENAMED.get((section, key), key)] = tuple(value) if isinstance(value, list) else value
    for key in ("method", "batching"):
        if key in data:
            parts["train"][key] = data.pop(key)
    facts = data.pop("facts", None)
    try:
        settings = {name: SETTINGS[name](**values) for name, values in parts.items()}
        model = ModelFacts(facts["name"], ModelDims(**facts["dims"]), facts["download_gb"]) if facts else None
        profile = Profile(**data, **settings, model=model)
    except TypeError as e:  # an argument no section knows: named, with the file
        raise ProfileError(f"{path}: {e}") from None
    if profile.name != path.stem:
        raise ProfileError(f"{path}: name {profile.name!r} differs from the file's name")
    return profile


def load_profiles(folder: Path = PROFILES_DIR) -> dict[str, Profile]:
    """Every profile file in `folder`, by name, CPU profiles first, then by the size of the model: adding a profile is
    adding one file."""
    profiles = [profile_from_file(f) for f in sorted(folder.glob("*.yaml"))]
    size = lambda p: (p.needs_gpu, p.model.download_gb if p.model else 0.0, p.name)  # noqa: E731
    return {p.name: p for p in sorted(profiles, key=size)}


PROFILES: dict[str, Profile] = load_profiles()
LLAMA3_8B = PROFILES["llama3-8b"].model  # the facts the GPU check and the memory tests compare against


def get_profile(name: str, hardware: Hardware | None = None) -> Profile:
    """Look up a profile by name; "auto" picks the largest one `hardware` can run."""
    if name == "auto":
        if hardware is None:
            raise ValueError('profile "auto" is picked for a machine: give its hardware (runconfig.resolve does)')
        return PROFILES[choose_profile(hardware)[0]]
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}; choose one of: auto, {', '.join(PROFILES)}")
    return PROFILES[name]


def choose_profile(hw: Hardware) -> tuple[str, str]:
    """The profile "auto" picks for this hardware, and why."""
    if hw.device != "cuda":
        return "pocket", f"no CUDA GPU found ({hw.name}): the pocket profile runs the whole lab offline on a CPU"
    mem = hw.memory_gb
    if mem >= PROFILES["llama3-70b-qlora"].min_memory_gb:
        return (
            "llama3-8b",
            f"{hw.name} with {mem:.0f} GB: the reference LoRA run fits (70B QLoRA also does: llama3-70b-qlora)",
        )
    if mem >= PROFILES["llama3-8b"].min_memory_gb:  # a "24 GB" card reports about 25.4e9 bytes
        return "llama3-8b", f"{hw.name} with {mem:.0f} GB: the reference Llama-3-8B LoRA run fits"
    if mem >= PROFILES["llama3-8b-qlora"].min_memory_gb:  # a "16 GB" T4 reports about 15.8e9 bytes
        return "llama3-8b-qlora", f"{hw.name} with {mem:.0f} GB: Llama-3-8B needs QLoRA to fit"
    return "pocket", f"{hw.name} has {mem:.0f} GB, under the 16 GB the smallest Llama-3 profile needs"
