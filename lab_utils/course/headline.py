"""The story first: the seed question answered before and after fine-tuning, and one line of headline figures per
notebook, read from a run's results.json (the report and compare-runs both show them)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lab_utils.course.quizbank import lookup
from lab_utils.measure.evaluate import Answer, contains_answer

NOT_RUN = "not run"
# The notebooks a full run records (results.json's keys), with what each one's headline line is about.
NOTEBOOKS: dict[str, str] = {
    "00_setup": "the machine and the base model's first answer",
    "01_alpaca_data": "the training data",
    "02_sft": "supervised fine-tuning",
    "03_memory_optimizations": "training memory",
    "04_vllm_serving": "serving throughput",
    "05_before_after": "before and after, over the held-out prompts",
    "06_export": "GGUF export and llama.cpp",
    "07_preference": "preference tuning (DPO)",
}
# The seed's own figures: the reference tutorial ("See the Difference") fine-tuned Llama-3-8B on Alpaca on a DGX Spark
# and asked both models through vLLM (--quantization fp8) at /v1/chat/completions, max_tokens 500.
SEED_SOURCE = "the seed's own figures: Llama-3-8B on a GPU (DGX Spark), vLLM --quantization fp8, /v1/chat/completions"
SEED_MAX_TOKENS = 500
SEED_BASE = Answer(  # the reply's first turns, verbatim: it runs on like this to the 500-token limit
    "Paris<|im_end|>\n<|im_start|>user\nNow, tell me the capital of France<|im_end|>\n<|im_start|>assistant\n"
    "Paris<|im_end|>\n<|im_start|>user\nNow, tell me the capital of France<|im_end|>\n<|im_start|>assistant\nParis",
    "length",
    500,
)
SEED_FINETUNED = Answer("### Response: The capital of France is Paris.", "stop", 11)
GGUF_RULE = (
    "the smallest GGUF file whose answer to the seed question names Paris and stops (06's seed answers through "
    "llama.cpp); where 06 recorded no seed answers, the one with the highest contains-answer (ties: the smallest)"
)


@dataclass(frozen=True)
class SeedRow:
    """One engine's answers to the seed question: the base model's and the tuned model's (None: not asked there)."""

    source: str
    base: Answer | None
    tuned: Answer | None
    base_limit: int | None = None  # the token limits the answers ran under, where recorded
    tuned_limit: int | None = None


@dataclass(frozen=True)
class HeadlineRow:
    """One notebook's headline figures as one line of text ("not run" where the run left the notebook out)."""

    notebook: str
    topic: str
    figures: str

    @property
    def ran(self) -> bool:
        """True when the run recorded this notebook."""
        return self.figures != NOT_RUN


def dig(values: Any, *keys: str | int) -> Any:
    """values[k1][k2]... or None where any level is missing (a subset or older run): the quiz's path lookup."""
    return lookup(values, keys)


def pct(value: Any) -> str:
    """A share as a whole percentage ("?" where it was not recorded)."""
    return f"{value:.0%}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"


def num(value: Any, digits: int = 3) -> str:
    """A number with `digits` significant digits, thousands separated ("?" where it was not recorded)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        return "?"
    if abs(value) >= 10**digits:
        return f"{value:,.0f}"
    return f"{value:,.{digits}g}"


def from_brief(reply: Any) -> Answer | None:
    """An Answer from a server reply as `api.brief` recorded it ({content, finish_reason, completion_tokens})."""
    if not isinstance(reply, dict) or "finish_reason" not in reply:
        return None
    return Answer(str(reply.get("content") or ""), str(reply.get("finish_reason")), reply.get("completion_tokens") or 0)


def from_generate(reply: Any) -> Answer | None:
    """An Answer from transformers' generate as 02 recorded it ({text, n_tokens, stopped})."""
    if not isinstance(reply, dict) or "stopped" not in reply:
        return None
    return Answer(str(reply.get("text") or ""), "stop" if reply["stopped"] else "length", reply.get("n_tokens") or 0)


def smallest_answering_gguf(r06: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """06's smallest GGUF that still answers (GGUF_RULE says how): (file type, its gguf_files entry), or None."""
    files = {ft: d for ft, d in (dig(r06, "gguf_files") or {}).items() if isinstance(d, dict)}

    def size(ft: str) -> float:
        """The file's size in MB (unknown: last)."""
        return files[ft].get("size_mb") or math.inf

    answered = [
        ft
        for ft, reply in (dig(r06, "seed_answers") or {}).items()
        if ft in files and (a := from_brief(reply)) and a.stopped and contains_answer(a.text, "Paris")
    ]
    if answered:
        ft = min(answered, key=size)
        return ft, files[ft]
    scored = {ft: dig(r06, "engines", f"llama.cpp gguf {ft}", "contains_answer") for ft in files}
    scored = {ft: s for ft, s in scored.items() if isinstance(s, (int, float))}
    if not scored:
        return None
    ft = min(scored, key=lambda f: (-scored[f], size(f)))
    return ft, files[ft]


def seed_rows(results: dict[str, dict[str, Any]]) -> list[SeedRow]:
    """The seed question's answers: the seed's own figures first, then each notebook's that asked it, by engine."""
    rows = [SeedRow(SEED_SOURCE, SEED_BASE, SEED_FINETUNED, SEED_MAX_TOKENS, SEED_MAX_TOKENS)]
    r00, r02, r04, r05 = (results.get(k, {}) for k in ("00_setup", "02_sft", "04_vllm_serving", "05_before_after"))
    if isinstance(story := dig(r00, "story"), dict):
        base = Answer(str(story.get("text", "")), str(story.get("finish_reason")), story.get("n_tokens") or 0)
        rows.append(
            SeedRow("00 · transformers generate (the base model only)", base, None, story.get("max_new_tokens"))
        )
    if r02 and (dig(r02, "reference_base") or dig(r02, "reference_finetuned")):
        base, tuned = from_generate(r02.get("reference_base")), from_generate(r02.get("reference_finetuned"))
        limit = r02.get("max_new_tokens")
        rows.append(SeedRow("02 · transformers generate, Alpaca prompt", base, tuned, limit, limit))
    if r04 and (dig(r04, "base_completion") or dig(r04, "chat_finetuned")):
        engine = r04.get("engine", "vLLM")
        source = f"04 · {engine}: base via /v1/completions (Alpaca prompt), fine-tuned via /v1/chat/completions"
        rows.append(SeedRow(source, from_brief(r04.get("base_completion")), from_brief(r04.get("chat_finetuned"))))
    if r05 and (dig(r05, "reference_base_completion") or dig(r05, "reference_finetuned_chat")):
        engine = r05.get("engine", "vLLM")
        source = f"05 · {engine}: base via /v1/completions (Alpaca prompt), fine-tuned via /v1/chat/completions"
        base, tuned = from_brief(r05.get("reference_base_completion")), from_brief(r05.get("reference_finetuned_chat"))
        rows.append(SeedRow(source, base, tuned, r05.get("max_tokens")))
    if (gguf := smallest_answering_gguf(results.get("06_export", {}))) and (
        tuned := from_brief(dig(results, "06_export", "seed_answers", gguf[0]))
    ):
        rows.append(SeedRow(f"06 · llama.cpp, GGUF {gguf[0]} ({num(gguf[1].get('size_mb'))} MB), chat", None, tuned))
    if scores := dig(results, "07_preference", "scores"):
        base, tuned = from_scores(scores.get("base")), from_scores(scores.get("DPO"))
        rows.append(SeedRow("07 · transformers generate: the base model, and the DPO model", base, tuned))
    return rows


def from_scores(scores: Any) -> Answer | None:
    """An Answer from 07's seed figures (seed_paris, seed_stopped, seed_tokens): 07 keeps no text, only "Paris?"."""
    if not isinstance(scores, dict) or "seed_tokens" not in scores:
        return None
    text = "(names Paris)" if scores.get("seed_paris") else "(does not name Paris)"
    return Answer(text, "stop" if scores.get("seed_stopped") else "length", scores.get("seed_tokens") or 0)


def _line_00(r: dict[str, Any]) -> str:
    """00: profile, device and the base model's first answer."""
    story = dig(r, "story") or {}
    answer = f"; base model's seed answer: {story.get('n_tokens', '?')} tokens, {story.get('finish_reason', '?')}"
    return f"profile {r.get('profile', '?')} on {r.get('device', '?')} ({r.get('device_name', '?')})" + (
        answer if story else ""
    )


def _line_01(r: dict[str, Any]) -> str:
    """01: examples kept and skipped, their lengths, whether the EOS is trained."""
    eos = {True: "; EOS supervised", False: "; EOS NOT supervised"}.get(r.get("eos_supervised"), "")
    return (
        f"{num(r.get('n_train'))} train / {num(r.get('n_eval'))} eval examples ({num(r.get('n_skipped'))} skipped); "
        f"median {num(r.get('median_tokens'))} tokens, max {num(r.get('max_tokens'))}{eos}"
    )


def _loss(value: Any) -> str:
    """A loss with 3 decimals."""
    return f"{value:.3f}" if isinstance(value, (int, float)) else "?"


def _ppl(loss: Any) -> str:
    """Perplexity, exp(loss): the number of equally likely next tokens the model's uncertainty amounts to."""
    return num(math.exp(loss)) if isinstance(loss, (int, float)) and loss < 50 else "?"


def _line_02(r: dict[str, Any]) -> str:
    """02: eval loss and perplexity before and after, stop rate and exact match before and after."""
    before, after = r.get("eval_loss_before"), r.get("eval_loss")
    return (
        f"eval loss {_loss(before)} → {_loss(after)} (perplexity {_ppl(before)} → {_ppl(after)}); "
        f"stop rate {pct(r.get('stop_rate_base'))} → {pct(r.get('stop_rate_finetuned'))}; "
        f"exact match {pct(r.get('exact_match_base'))} → {pct(r.get('exact_match_finetuned'))} "
        f"({num(r.get('n_eval_prompts'))} held-out prompts); {r.get('method', '?')}, {num(r.get('steps'))} steps"
    )


def _line_03(r: dict[str, Any]) -> str:
    """03: the baseline's peak memory beside the lowest configuration's."""
    ran = [c for c in r.get("configs") or [] if c.get("ran") and isinstance(c.get("peak_memory_mb"), (int, float))]
    if not ran:
        return "no configuration recorded a peak"
    base, low = ran[0], min(ran, key=lambda c: c["peak_memory_mb"])
    ratio = base["peak_memory_mb"] / low["peak_memory_mb"] if low["peak_memory_mb"] > 0 else math.nan
    return (
        f"peak memory: {num(base['peak_memory_mb'])} MB ({base['name']}) → lowest {num(low['peak_memory_mb'])} MB "
        f"({low['name']}), {num(ratio, 2)}x less; {len(ran)} of {len(r.get('configs') or [])} configurations ran"
    )


def _line_04(r: dict[str, Any]) -> str:
    """04: tokens/s at one request in flight and at 32 (or the highest level measured)."""
    levels = {lv.get("concurrency"): lv.get("tokens_per_s") for lv in r.get("throughput") or [] if isinstance(lv, dict)}
    levels = {c: t for c, t in levels.items() if isinstance(c, int)}
    if not levels:
        return f"{r.get('engine', '?')}: no throughput recorded"
    top = 32 if 32 in levels else max(levels)
    c1, ctop = levels.get(1), levels[top]
    ratio = f" ({num(ctop / c1, 2)}x)" if isinstance(c1, (int, float)) and c1 and isinstance(ctop, (int, float)) else ""
    seed = r.get("openai_client_finish_reason")
    return f"{r.get('engine', '?')}: {num(c1, 4)} tokens/s at c1 → {num(ctop, 4)} at c{top}{ratio}" + (
        f"; the seed through the OpenAI client: {seed}" if seed else ""
    )


def _line_05(r: dict[str, Any]) -> str:
    """05: stop rate, exact match and contains-answer by kind, base → fine-tuned."""
    base, tuned = r.get("base") or {}, r.get("finetuned") or {}
    kinds = dig(r, "by_kind", "finetuned") or {}
    by_kind = ", ".join(
        f"{kind} {pct(dig(r, 'by_kind', 'base', kind, 'contains_answer'))} → {pct(dig(v, 'contains_answer'))}"
        for kind, v in kinds.items()
    )
    return (
        f"{r.get('engine', '?')}, {num(r.get('n_prompts'))} prompts: stop rate {pct(base.get('stop_rate'))} → "
        f"{pct(tuned.get('stop_rate'))}; exact match {pct(base.get('exact_match'))} → {pct(tuned.get('exact_match'))}; "
        f"contains answer {pct(base.get('contains_answer'))} → {pct(tuned.get('contains_answer'))}"
        + (f" ({by_kind})" if by_kind else "")
    )


def _line_06(r: dict[str, Any]) -> str:
    """06: the smallest GGUF that still answers (GGUF_RULE), beside the f16 file."""
    found = smallest_answering_gguf(r)
    if found is None:
        return f"{len(dig(r, 'gguf_files') or {})} GGUF files; none answered (or llama.cpp was not installed)"
    ft, info = found
    f16 = dig(r, "gguf_files", "f16", "size_mb")
    smaller = (
        f" ({num(f16 / info['size_mb'], 2)}x smaller than f16)" if f16 and info.get("size_mb") and ft != "f16" else ""
    )
    seed = from_brief(dig(r, "seed_answers", ft))
    said = f"; seed answer {seed.text!r}, {seed.finish_reason}" if seed else ""
    scored = dig(r, "engines", f"llama.cpp gguf {ft}", "contains_answer")
    return f"smallest GGUF that still answers: {ft}, {num(info.get('size_mb'))} MB{smaller}{said}" + (
        f"; contains answer {pct(scored)}" if scored is not None else ""
    )


def _line_07(r: dict[str, Any]) -> str:
    """07: abstention on invented countries and on real ones, SFT → DPO, and real capitals kept."""
    sft, dpo = dig(r, "scores", "SFT") or {}, dig(r, "scores", "DPO") or {}
    served = dig(r, "served", "abstain_invented")
    return (
        f"abstains on invented countries: SFT {pct(sft.get('abstain_invented'))} → DPO "
        f"{pct(dpo.get('abstain_invented'))}; on real ones {pct(sft.get('abstain_real'))} → "
        f"{pct(dpo.get('abstain_real'))}; names real capitals {pct(sft.get('capital_real'))} → "
        f"{pct(dpo.get('capital_real'))}"
        + (f"; served ({r.get('engine', '?')}): {pct(served)}" if served is not None else "")
    )


LINES = {
    "00_setup": _line_00,
    "01_alpaca_data": _line_01,
    "02_sft": _line_02,
    "03_memory_optimizations": _line_03,
    "04_vllm_serving": _line_04,
    "05_before_after": _line_05,
    "06_export": _line_06,
    "07_preference": _line_07,
}


def headline(results: dict[str, dict[str, Any]]) -> list[HeadlineRow]:
    """One line of headline figures per notebook, in order; "not run" for a notebook the run left out."""
    rows = []
    for book, topic in NOTEBOOKS.items():
        values = results.get(book)
        rows.append(HeadlineRow(book, topic, LINES[book](values) if isinstance(values, dict) else NOT_RUN))
    return rows


def finish_note(answer: Answer, limit: int | None = None) -> str:
    """How an answer ended, in words: "11 tokens, finish_reason 'stop': stopped"."""
    how = {"stop": "stopped", "length": "cut at the limit" + (f" of {limit}" if limit else "")}
    return f"{answer.n_tokens} tokens, finish_reason {answer.finish_reason!r}: {how.get(answer.finish_reason, '?')}"
