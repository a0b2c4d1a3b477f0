"""The lab report of a run (HTML and Markdown), story first, and a comparison of two runs' recorded results."""

from __future__ import annotations

import html
import math
import textwrap
from pathlib import Path
from typing import Any

from lab_utils.core.paths import atomic_write_text
from lab_utils.core.results import load_results
from lab_utils.course.headline import GGUF_RULE, finish_note, headline, seed_rows
from lab_utils.measure.evaluate import REFERENCE_QUESTION, Answer

esc = html.escape
STORY_INTRO = (
    "The lab's story in one question. The seed's own figures come first (the reference tutorial: its base model loops "
    "until max_tokens, its fine-tuned model answers and stops); then this run's answers, per notebook and engine."
)
HEADLINE_NOTE = (
    "Arrows read before → after: base → fine-tuned (02, 05), SFT → DPO (07), one request in flight → 32, or the "
    "most measured (04). Perplexity = exp(eval loss). 03: the first configuration that ran beside the one with the "
    f"lowest peak. 06: {GGUF_RULE}."
)
STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top;font-size:90%}img{max-width:100%}"
    "code{white-space:pre-wrap}.cut{color:#a40}.stopped{color:#070}.seedref{background:#f4f4ff}.notrun{color:#888}"
    ".note{font-size:85%;color:#555}details{margin:.3em 0}summary{cursor:pointer;font-weight:bold}"
)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; lists of dicts keyed by their first field (e.g. throughput.c16.tokens_per_s)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key == "versions":
            continue
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                first_key = next(iter(item))
                out.update(
                    flatten({k: v for k, v in item.items() if k != first_key}, f"{name}.{first_key}={item[first_key]}.")
                )
        else:
            out[name] = value
    return out


def _fmt(value: Any) -> str:
    """A value as a short string for a table cell."""
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 90 else text[:87] + "..."


def _context(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Profile, hardware and versions of a run, from what its notebooks recorded."""
    setup = results.get("00_setup", {})
    versions = next((v["versions"] for v in results.values() if "versions" in v), {})
    return {
        "profile": setup.get("profile", "?"),
        "device": setup.get("device", "?"),
        "device_name": setup.get("device_name", "?"),
        "versions": versions,
    }


def _notebook_file(folder: Path, book: str) -> Path | None:
    """The executed notebook behind a results key (07_preference was recorded by 07_preference_tuning.ipynb)."""
    exact = folder / f"{book}.ipynb"
    return exact if exact.exists() else next(iter(sorted(folder.glob(f"{book[:2]}_*.ipynb"))), None)


def _short(text: str, width: int = 160) -> str:
    """An answer cut to `width` characters for a table cell."""
    return text if len(text) <= width else text[: width - 1] + "…"


def _md_cell(text: str) -> str:
    """Text safe in a Markdown table cell: no pipes, no newlines, no raw tags."""
    return text.replace("|", "\\|").replace("\n", " ⏎ ").replace("<", "&lt;").replace(">", "&gt;")


def story_markdown(folder: Path, results: dict[str, dict[str, Any]]) -> list[str]:
    """The report's opening in Markdown: the seed's answers, the headline table, the plots."""
    lines = [f'## The seed question: "{REFERENCE_QUESTION}"', "", STORY_INTRO, ""]
    lines += ["| answered by | base model | fine-tuned model |", "|---|---|---|"]
    for row in seed_rows(results):
        cells = [
            f"{_md_cell(_short(a.text))} — {finish_note(a, limit)}" if a else "—"
            for a, limit in ((row.base, row.base_limit), (row.tuned, row.tuned_limit))
        ]
        lines.append(f"| {_md_cell(row.source)} | {cells[0]} | {cells[1]} |")
    lines += ["", "## Headline figures", "", "| notebook | about | figures |", "|---|---|---|"]
    lines += [f"| {r.notebook} | {r.topic} | {_md_cell(r.figures)} |" for r in headline(results)]
    lines += ["", HEADLINE_NOTE, "", "## Plots", ""]
    figures = sorted((folder / "figures").glob("*.png"))
    for fig in figures:
        lines += [f"![{fig.stem}](figures/{fig.name})", ""]
    return lines if figures else [*lines, "(no plots)", ""]


def report_markdown(folder: Path) -> str:
    """The report as Markdown: the story (seed answers, headline figures, plots), then every notebook's records."""
    results = load_results(folder)
    ctx = _context(results)
    lines = [
        f"# Lab report: {folder.name}",
        "",
        f"Profile **{ctx['profile']}** on **{ctx['device']}** ({ctx['device_name']}).",
        "",
        *story_markdown(folder, results),
        "## Raw records",
        "",
    ]
    for book, values in results.items():
        notebook_file = _notebook_file(folder, book)
        link = f" ([executed notebook]({notebook_file.name}))" if notebook_file else ""
        lines += [f"### {book}{link}", "", "| key | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v).replace('|', '/')} |" for k, v in flatten(values).items()]
        lines.append("")
    lines += ["### Versions", "", "| package | version |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(ctx["versions"].items())]
    return "\n".join(lines) + "\n"


def _answer_html(answer: Answer | None, limit: int | None) -> str:
    """One answer in a table cell: its text, then its tokens and finish_reason."""
    if answer is None:
        return "<td class='none'>—</td>"
    ended = "stopped" if answer.stopped else "cut"
    note = f"<span class='{ended}'>{esc(finish_note(answer, limit))}</span>"
    return f"<td><code>{esc(_short(answer.text))}</code><br>{note}</td>"


def story_html(folder: Path, results: dict[str, dict[str, Any]]) -> list[str]:
    """The report's opening in HTML: the seed's answers, the headline table, the plots."""
    parts = [
        f"<h2 id='seed'>The seed question: &ldquo;{esc(REFERENCE_QUESTION)}&rdquo;</h2><p>{esc(STORY_INTRO)}</p>",
        "<table><tr><th>answered by (notebook · engine)</th><th>base model</th><th>fine-tuned model</th></tr>",
    ]
    for i, row in enumerate(seed_rows(results)):
        cls = " class='seedref'" if i == 0 else ""
        cells = _answer_html(row.base, row.base_limit) + _answer_html(row.tuned, row.tuned_limit)
        parts.append(f"<tr{cls}><td>{esc(row.source)}</td>{cells}</tr>")
    parts += [
        "</table>",
        "<h2 id='headline'>Headline figures</h2><table><tr><th>notebook</th><th>about</th><th>figures</th></tr>",
    ]
    for r in headline(results):
        cls = "" if r.ran else " class='notrun'"
        parts.append(f"<tr{cls}><td>{esc(r.notebook)}</td><td>{esc(r.topic)}</td><td>{esc(r.figures)}</td></tr>")
    parts += ["</table>", f"<p class='note'>{esc(HEADLINE_NOTE)}</p>", "<h2 id='plots'>Plots</h2>"]
    parts += [
        f"<figure><img src='figures/{esc(f.name)}' alt='{esc(f.stem)}'><figcaption>{esc(f.stem)}</figcaption></figure>"
        for f in sorted((folder / "figures").glob("*.png"))
    ] or ["<p>(no plots)</p>"]
    return parts


def report_html(folder: Path) -> str:
    """The same report as a self-contained HTML page (figures referenced relative to the run folder), records folded."""
    results = load_results(folder)
    ctx = _context(results)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Lab report {esc(folder.name)}</title>",
        f"<style>{STYLE}</style>",
        "</head><body>",
        f"<h1>Lab report: {esc(folder.name)}</h1>",
        f"<p>Profile <b>{esc(str(ctx['profile']))}</b> on <b>{esc(str(ctx['device']))}</b> "
        f"({esc(str(ctx['device_name']))}).</p>",
        *story_html(folder, results),
        "<h2 id='records'>Raw records</h2>",
    ]
    for book, values in results.items():
        notebook_file = _notebook_file(folder, book)
        link = f" · <a href='{esc(notebook_file.name)}'>executed notebook</a>" if notebook_file else ""
        parts.append(f"<details><summary>{esc(book)}{link}</summary><table><tr><th>key</th><th>value</th></tr>")
        parts += [f"<tr><td>{esc(k)}</td><td>{esc(_fmt(v))}</td></tr>" for k, v in flatten(values).items()]
        parts.append("</table></details>")
    parts.append("<details><summary>versions</summary><table>")
    parts += [f"<tr><td>{esc(k)}</td><td>{esc(str(v))}</td></tr>" for k, v in sorted(ctx["versions"].items())]
    parts.append("</table></details></body></html>")
    return "\n".join(parts) + "\n"


def write_report(folder: str | Path) -> tuple[Path, Path]:
    """Write report.html and report.md into the run folder (atomically)."""
    folder = Path(folder)
    return (
        atomic_write_text(folder / "report.html", report_html(folder)),
        atomic_write_text(folder / "report.md", report_markdown(folder)),
    )


def compare_runs(a: str | Path, b: str | Path) -> list[dict[str, Any]]:
    """Every numeric figure two runs both recorded, with the ratio b / a (e.g. CPU vs GPU, LoRA vs QLoRA)."""
    fa = {f"{book}.{k}": v for book, vals in load_results(a).items() for k, v in flatten(vals).items()}
    fb = {f"{book}.{k}": v for book, vals in load_results(b).items() for k, v in flatten(vals).items()}
    rows = []
    for key in sorted(set(fa) | set(fb)):
        va, vb = fa.get(key), fb.get(key)
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (va, vb))
        ratio = vb / va if numeric and va not in (0, None) and not math.isnan(va) else None
        if numeric or va != vb:
            rows.append({"figure": key, "a": va, "b": vb, "b/a": round(ratio, 3) if ratio is not None else None})
    return rows


def compare_headline(a: str | Path, b: str | Path) -> list[dict[str, str]]:
    """The report's headline table for two runs side by side: one row per notebook, one column per run."""
    ha, hb = headline(load_results(a)), headline(load_results(b))
    return [{"notebook": x.notebook, "a": x.figures, "b": y.figures} for x, y in zip(ha, hb)]


def compare_headline_text(a: str | Path, b: str | Path, width: int = 56) -> str:
    """compare_headline as a text table, each run's figures wrapped to `width` characters."""
    rows = compare_headline(a, b)
    name = max(len(r["notebook"]) for r in rows)
    lines = [f"{'notebook':<{name}}  {'a = ' + Path(a).name:<{width}}  b = {Path(b).name}"]
    for r in rows:
        left, right = textwrap.wrap(r["a"], width) or [""], textwrap.wrap(r["b"], width) or [""]
        for i in range(max(len(left), len(right))):
            cells = (left[i] if i < len(left) else "", right[i] if i < len(right) else "")
            lines.append(f"{r['notebook'] if i == 0 else '':<{name}}  {cells[0]:<{width}}  {cells[1]}".rstrip())
    return "\n".join(lines)


def compare_runs_text(a: str | Path, b: str | Path) -> str:
    """The two runs' headline tables side by side, then compare_runs as an aligned text table."""
    rows = compare_runs(a, b)
    width = max((len(r["figure"]) for r in rows), default=10)
    lines = [
        "Headline figures",
        compare_headline_text(a, b),
        "",
        "Every recorded figure (None: that run did not record it)",
    ]
    lines += [f"{'figure':<{width}}  {'a':>14}  {'b':>14}  {'b/a':>8}", f"a = {a}", f"b = {b}"]
    for r in rows:
        ratio = "" if r["b/a"] is None else f"{r['b/a']:.3g}"
        lines.append(f"{r['figure']:<{width}}  {_fmt(r['a']):>14}  {_fmt(r['b']):>14}  {ratio:>8}")
    return "\n".join(lines)
