"""The lab report of a run (HTML and Markdown) and a comparison of two runs' recorded results."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from lab_utils.run.paths import atomic_write_text
from lab_utils.run.results import load_results


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


def report_markdown(folder: Path) -> str:
    """The report as Markdown: context, every notebook's figures, plots and links."""
    results = load_results(folder)
    ctx = _context(results)
    lines = [
        f"# Lab report: {folder.name}",
        "",
        f"Profile **{ctx['profile']}** on **{ctx['device']}** ({ctx['device_name']}).",
        "",
    ]
    for book, values in results.items():
        notebook_file = folder / f"{book}.ipynb"
        link = f" ([executed notebook]({notebook_file.name}))" if notebook_file.exists() else ""
        lines += [f"## {book}{link}", "", "| key | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v).replace('|', '/')} |" for k, v in flatten(values).items()]
        for fig in sorted((folder / "figures").glob(f"{book[:2]}_*.png")):
            lines += ["", f"![{fig.stem}](figures/{fig.name})"]
        lines.append("")
    lines += ["## Versions", "", "| package | version |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(ctx["versions"].items())]
    return "\n".join(lines) + "\n"


def report_html(folder: Path) -> str:
    """The same report as a self-contained HTML page (figures referenced relative to the run folder)."""
    results = load_results(folder)
    ctx = _context(results)
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Lab report {esc(folder.name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:90%}img{max-width:100%}</style>",
        "</head><body>",
        f"<h1>Lab report: {esc(folder.name)}</h1>",
        f"<p>Profile <b>{esc(str(ctx['profile']))}</b> on <b>{esc(str(ctx['device']))}</b> ({esc(str(ctx['device_name']))}).</p>",
    ]
    for book, values in results.items():
        notebook_file = folder / f"{book}.ipynb"
        link = f" <a href='{esc(notebook_file.name)}'>executed notebook</a>" if notebook_file.exists() else ""
        parts.append(f"<h2>{esc(book)}{link}</h2><table><tr><th>key</th><th>value</th></tr>")
        parts += [f"<tr><td>{esc(k)}</td><td>{esc(_fmt(v))}</td></tr>" for k, v in flatten(values).items()]
        parts.append("</table>")
        parts += [
            f"<p><img src='figures/{esc(f.name)}' alt='{esc(f.stem)}'></p>"
            for f in sorted((folder / "figures").glob(f"{book[:2]}_*.png"))
        ]
    parts.append("<h2>Versions</h2><table>")
    parts += [f"<tr><td>{esc(k)}</td><td>{esc(str(v))}</td></tr>" for k, v in sorted(ctx["versions"].items())]
    parts.append("</table></body></html>")
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


def compare_runs_text(a: str | Path, b: str | Path) -> str:
    """compare_runs as an aligned text table."""
    rows = compare_runs(a, b)
    width = max((len(r["figure"]) for r in rows), default=10)
    lines = [f"{'figure':<{width}}  {'a':>14}  {'b':>14}  {'b/a':>8}", f"a = {a}", f"b = {b}"]
    for r in rows:
        ratio = "" if r["b/a"] is None else f"{r['b/a']:.3g}"
        lines.append(f"{r['figure']:<{width}}  {_fmt(r['a']):>14}  {_fmt(r['b']):>14}  {ratio:>8}")
    return "\n".join(lines)
