"""Talking to an OpenAI-compatible server (vLLM here) with plain HTTP, as curl would: chat and raw completions, and
the parts of a reply a learner compares."""

from __future__ import annotations

from typing import Any

from lab_utils.data.pocket_data import SEED_PROMPT

# The reference tutorial's request: a system prompt and its question.
REFERENCE_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": SEED_PROMPT},
]

# ChatML, the chat format transformers once applied to any model without a chat template (a fallback since removed):
# the reference tutorial's base model got this, and looped writing "<|im_end|>" turns. Notebook 04 sends it with the
# request to show what a base model does with a chat format it never learned.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def chat_http(
    base_url: str,
    api_key: str,
    model: str,
    messages: list[dict[str, str]],
    max_tokens: int = 500,
    timeout: float = 120.0,
    chat_template: str | None = None,
    temperature: float | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST /v1/chat/completions with plain HTTP, as curl would: (status code, JSON body). `chat_template` sends a
    template in the request (vLLM's extension; the server must run with --trust-request-chat-template); `temperature`
    None leaves the server's default."""
    import requests

    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    if chat_template is not None:
        body["chat_template"] = chat_template
    if temperature is not None:  # None: the server's default, as the tutorial's request leaves it
        body["temperature"] = temperature
    r = requests.post(
        f"{base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {api_key}"},
        json=body,
        timeout=timeout,
    )
    try:
        body = r.json()
    except ValueError:
        body = {"text": r.text}
    return r.status_code, body


def complete_http(
    base_url: str, api_key: str, model: str, prompt: str, max_tokens: int = 500, timeout: float = 120.0
) -> tuple[int, dict[str, Any]]:
    """POST /v1/completions with a raw prompt (what a base model without a chat template needs)."""
    import requests

    r = requests.post(
        f"{base_url}/v1/completions",
        headers={"Authorization": f"Bearer {api_key}"},
        json={"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
        timeout=timeout,
    )
    return r.status_code, r.json()


def brief(body: dict[str, Any], width: int = 300) -> dict[str, Any]:
    """The parts of a completion response a learner compares: text, finish_reason, token counts."""
    if "choices" not in body:
        return {"error": body.get("error", body)}
    choice = body["choices"][0]
    text = choice.get("message", {}).get("content") if "message" in choice else choice.get("text")
    text = text or ""
    return {
        "model": body.get("model"),
        "finish_reason": choice.get("finish_reason"),
        "completion_tokens": body.get("usage", {}).get("completion_tokens"),
        "content": text if len(text) <= width else text[: width - 3] + "...",
    }
