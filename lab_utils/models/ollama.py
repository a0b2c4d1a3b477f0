"""Ollama's Modelfile for an exported GGUF: the training prompt as a Go template, the EOS text as stop, greedy decoding.

Ollama does not run the GGUF's Jinja chat template: it looks the template up among the ones it knows and otherwise
sends the bare `{{ .Prompt }}`, so a fine-tuned model needs its own TEMPLATE. Beside the builder, a reader for the
Modelfile lines it writes (as Ollama's parser reads them: a triple-quoted value is kept verbatim) and a renderer for
the part of Go's text/template the TEMPLATE uses, so a test can check what Ollama renders without Ollama.
"""

from __future__ import annotations

import re
from typing import Any

from lab_utils.data.alpaca import PROMPT_NO_INPUT

TEMPLATE_FIELDS = ("System", "Prompt", "Response")  # the fields of Ollama's (single-turn) template data


def alpaca_template() -> str:
    """The training prompt as an Ollama TEMPLATE: a system message replaces the first sentence, as in the lab's chat
    template; no BOS, which Ollama's tokenizer adds itself (the GGUF says `add_bos_token`)."""
    system, rest = PROMPT_NO_INPUT.split("\n\n", 1)
    body = rest.replace("{instruction}", "{{ .Prompt }}")
    return "{{ if .System }}{{ .System }}{{ else }}" + system + "{{ end }}\n\n" + body + "{{ .Response }}"


def modelfile(gguf_file: str, template: str, stop: str, temperature: float = 0.0) -> str:
    """The Modelfile text: FROM the GGUF (a path beside the Modelfile), the TEMPLATE, the stop text, the temperature."""
    if '"""' in template or '"' in stop or "\n" in stop:
        raise ValueError("the template may not hold triple quotes, nor the stop text quotes or newlines")
    return (
        f"FROM ./{gguf_file}\n"
        f'TEMPLATE """{template}"""\n'
        f'PARAMETER stop "{stop}"\n'
        f"PARAMETER temperature {temperature:g}\n"
    )


_COMMAND = re.compile(r"([A-Za-z]+)[ \t]+")
_PARAMETER = re.compile(r"([A-Za-z0-9_]+)[ \t]+")
_VALUE = re.compile(r'"""(.*?)"""[ \t]*(?:\n|$)|"([^"\n]*)"[ \t]*(?:\n|$)|([^\n]*)(?:\n|$)', re.S)


def parse_modelfile(text: str) -> dict[str, list[str]]:
    """The commands of a Modelfile, by name (`from`, `template`, and each PARAMETER by its own name, e.g. `stop`),
    each with its values: a triple-quoted value verbatim, a quoted one unquoted, a bare one to the end of the line."""
    out: dict[str, list[str]] = {}
    pos = 0
    while pos < len(text):
        if text[pos] in " \t\r\n":
            pos += 1
            continue
        if text[pos] == "#":  # a comment line
            pos = text.find("\n", pos) + 1 or len(text)
            continue
        command = _COMMAND.match(text, pos)
        if not command:
            raise ValueError(f"Modelfile: no command at {text[pos : pos + 30]!r}")
        name, pos = command.group(1).lower(), command.end()
        if name == "parameter":
            parameter = _PARAMETER.match(text, pos)
            if not parameter:
                raise ValueError(f"Modelfile: no parameter name at {text[pos : pos + 30]!r}")
            name, pos = parameter.group(1), parameter.end()
        value = _VALUE.match(text, pos)
        if value is None:
            raise ValueError(f"Modelfile: no value at {text[pos : pos + 30]!r}")
        verbatim, quoted, bare = value.groups()
        out.setdefault(name, []).append(bare.strip() if bare is not None else verbatim if quoted is None else quoted)
        pos = value.end()
    return out


_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.S)


def render_go_template(template: str, data: dict[str, Any]) -> str:
    """Render the part of Go's text/template an Ollama TEMPLATE like `alpaca_template` uses: `{{ .Field }}`,
    `{{ if .Field }}...{{ else }}...{{ end }}` (nested), `{{-`/`-}}` trims; anything else raises ValueError."""
    out: list[str] = []
    frames: list[list[bool]] = []  # per open `if`: [its condition, in its else branch]
    pos, trim_next = 0, False
    for m in _ACTION.finditer(template):
        text = template[pos : m.start()]
        text = text.lstrip() if trim_next else text
        if _emitting(frames):
            out.append(text.rstrip() if m.group(1) else text)
        action, pos, trim_next = m.group(2), m.end(), bool(m.group(3))
        if action.startswith(".") and " " not in action:
            value = str(_field(data, action[1:]))
            out.append(value if _emitting(frames) else "")
        elif action.startswith("if .") and " " not in action[4:]:
            frames.append([bool(_field(data, action[4:])), False])
        elif action == "else" and frames and not frames[-1][1]:
            frames[-1][1] = True
        elif action == "end" and frames:
            frames.pop()
        else:
            raise ValueError(f"Go template action {{{{ {action} }}}} is outside the subset this renderer knows")
    if frames:
        raise ValueError("Go template: an `if` without its `end`")
    tail = template[pos:]
    out.append(tail.lstrip() if trim_next else tail)
    return "".join(out)


def render_prompt(template: str, prompt: str, system: str = "") -> str:
    """What Ollama sends the model for one user message (and an optional system message): the TEMPLATE rendered up to
    `{{ .Response }}`, which is empty while the model answers."""
    return render_go_template(template, dict(zip(TEMPLATE_FIELDS, (system, prompt, ""), strict=True)))


def _emitting(frames: list[list[bool]]) -> bool:
    """Whether text is written here: every open `if` is in the branch its condition chose."""
    return all(cond != in_else for cond, in_else in frames)


def _field(data: dict[str, Any], name: str) -> Any:
    """A field of the template's data, as Go reads `.Name`: an unknown field is an error."""
    if name not in data:
        raise ValueError(f"Go template field .{name}: the data has {sorted(data)}")
    return data[name]
