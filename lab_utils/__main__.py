"""Command line: `python -m lab_utils COMMAND` runs what the notebooks run, without Jupyter.

Each command imports the lab's modules it needs inside its own function, on purpose (the one place the package defers
its imports): `--help` and the light commands (probe, write-config) do not load every stage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_build_pocket(args: argparse.Namespace) -> int:
    """Rebuild the pocket base model from scratch on this machine and print how it compares with the shipped one."""
    from dataclasses import replace

    from lab_utils.models.pocket import PocketConfig, build_info, ensure_pocket_model, ship

    config = replace(PocketConfig(), max_steps=args.steps) if args.steps else PocketConfig()
    path = ensure_pocket_model(config, force=not args.keep)
    info = build_info(path)
    shown = {k: v for k, v in info.items() if k not in ("pretrain", "files", "versions", "config")}
    shown["pretrain"] = {k: v for k, v in info["pretrain"].items() if k != "losses"}
    print(json.dumps(shown | {"path": str(path)}, indent=2))
    if args.ship:
        print(f"shipped: {ship(path)}")
    else:
        print(
            f"the lab uses the shipped model unless told otherwise: LAB_POCKET=local (make lab POCKET=local) uses {path}"
        )
    return 0


def _cmd_run_lab(args: argparse.Namespace) -> int:
    """Execute the notebooks in order into runs/<timestamp>/."""
    from lab_utils.lab.runner import NotebookError, run_lab

    try:
        run_lab(
            profile=args.profile,
            notebooks=args.notebooks or None,
            cell_timeout=args.cell_timeout,
            rehearsal=args.rehearsal,
            quick=args.quick,
            dataset=args.dataset,
        )
    except NotebookError:
        return 1
    return 0


def _cmd_strip(args: argparse.Namespace) -> int:
    """Remove outputs and execution counts from notebooks (what git should hold)."""
    from lab_utils.lab.notebooks import strip_notebook

    changed = [p for p in args.paths if strip_notebook(Path(p))]
    for p in changed:
        print(f"stripped {p}")
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    """Print the hardware probe and the feature matrix."""
    from lab_utils.core.features import feature_table
    from lab_utils.lab.runconfig import resolve

    cfg = resolve("auto")
    print(json.dumps(cfg.hardware.to_dict(), indent=2))
    for row in feature_table(cfg.hardware):
        print(f"{row['feature']:>16}: {'yes' if row['available'] else 'no ':3}  {row['detail']}")
    print(f"profile 'auto' -> {cfg.name}: {cfg.reason}")
    return 0


def _cmd_write_config(args: argparse.Namespace) -> int:
    """Resolve a profile for this machine and write its config.yaml, with the checked data split, for recipes/sft.py."""
    from lab_utils.data.alpaca import DataError
    from lab_utils.lab.config_file import write_config
    from lab_utils.lab.runconfig import resolve

    cfg = resolve(args.profile, method=args.method or "", max_steps=args.max_steps, dataset=args.dataset)
    folder = Path(args.folder or f"runs/config-{cfg.name}")
    try:
        path, info = write_config(cfg, folder / "sft", folder)
    except DataError as e:  # your file's bad line, named: one line, no traceback
        print(e, file=sys.stderr)
        return 2
    print(f"{path}: {info['load_summary']}; {info['n_train']} train and {info['n_eval']} eval examples")
    print(f"train with: python recipes/sft.py --config {path}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    """(Re)write a run's report.html and report.md."""
    from lab_utils.course.report import write_report

    for path in write_report(Path(args.run)):
        print(path)
    return 0


def _cmd_compare_runs(args: argparse.Namespace) -> int:
    """Print every figure two runs recorded, side by side with the ratio."""
    from lab_utils.course.report import compare_runs_text

    print(compare_runs_text(args.a, args.b))
    return 0


def _cmd_prefetch(args: argparse.Namespace) -> int:
    """Download a profile's hub model and data ahead of class, then report what is cached."""
    from lab_utils.core.profiles import get_profile
    from lab_utils.lab.readiness import cache_report, prefetch

    prof = get_profile(args.profile)
    if not args.report_only:
        prefetch(prof)
    for row in cache_report(prof):
        print(f"{'cached ' if row['cached'] else 'MISSING'}  {row['item']}  ({row['where']})")
    return 0 if all(r["cached"] for r in cache_report(prof)) else 1


def _cmd_ready(args: argparse.Namespace) -> int:
    """Check whether this machine can run a profile, with the fix for each failure."""
    from lab_utils.lab.readiness import checks
    from lab_utils.lab.runconfig import resolve

    cfg = resolve(args.profile)
    results = checks(cfg.profile, cfg.hardware)
    for c in results:
        print(f"{'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.detail}" + (f"\n      fix: {c.fix}" if c.fix else ""))
    return 0 if all(c.ok for c in results) else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m lab_utils`."""
    parser = argparse.ArgumentParser(prog="python -m lab_utils", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build-pocket", help="rebuild the pocket base model on this machine (into .cache/)")
    p.add_argument("--steps", type=int, default=0, help="a quick build of N pretraining steps (default: the full 500)")
    p.add_argument("--keep", action="store_true", help="reuse an existing local build of the same recipe")
    p.add_argument("--ship", action="store_true", help="maintainers: copy the build into models/pocket-base/")
    p.set_defaults(func=_cmd_build_pocket)
    p = sub.add_parser("run-lab", help="execute the notebooks headlessly into runs/<timestamp>/")
    p.add_argument("--profile", default="auto")
    p.add_argument("--notebooks", nargs="*", help="prefixes of the notebooks to run, e.g. 02 04 (default: all)")
    p.add_argument(
        "--cell-timeout",
        type=int,
        default=-1,
        help="seconds one cell may run; 0: no limit; default: the profile's (none for the GPU profiles)",
    )
    p.add_argument(
        "--rehearsal",
        action="store_true",
        help="run a GPU profile's whole flow on this machine with small local stand-ins of its model and data",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="class mode: 100 training steps, a shorter benchmark, five memory configurations, a shorter load test",
    )
    p.add_argument("--dataset", default="", help="your own Alpaca-format JSON/JSONL file (or hub id) for 01 and 02")
    p.set_defaults(func=_cmd_run_lab)
    p = sub.add_parser("strip-notebooks", help="remove outputs from notebooks")
    p.add_argument("paths", nargs="+")
    p.set_defaults(func=_cmd_strip)
    p = sub.add_parser("write-config", help="write a profile's config.yaml for this machine (recipes/sft.py --config)")
    p.add_argument("--profile", default="auto")
    p.add_argument("--method", choices=["lora", "qlora", "full"], help="default: the profile's")
    p.add_argument("--max-steps", type=int, default=0, help="default: the profile's")
    p.add_argument("--dataset", default="", help="your own Alpaca-format JSON/JSONL file (default: the profile's data)")
    p.add_argument("--folder", default="", help="where config.yaml and data/ go (default: runs/config-<profile>)")
    p.set_defaults(func=_cmd_write_config)
    p = sub.add_parser("report", help="write report.html and report.md for a run folder")
    p.add_argument("run", nargs="?", default="runs/latest")
    p.set_defaults(func=_cmd_report)
    p = sub.add_parser("compare-runs", help="compare two runs' recorded figures (e.g. CPU vs GPU, LoRA vs QLoRA)")
    p.add_argument("a")
    p.add_argument("b")
    p.set_defaults(func=_cmd_compare_runs)
    p = sub.add_parser("prefetch", help="download a profile's hub model and data ahead of class")
    p.add_argument("--profile", default="auto")
    p.add_argument("--report-only", action="store_true", help="only report what is cached")
    p.set_defaults(func=_cmd_prefetch)
    p = sub.add_parser("ready", help="can this machine run the profile? (memory, GPU, gated-model access)")
    p.add_argument("--profile", default="auto")
    p.set_defaults(func=_cmd_ready)
    p = sub.add_parser("probe", help="show the hardware probe and feature matrix")
    p.set_defaults(func=_cmd_probe)
    p = sub.add_parser("answer-key", help="write the quizzes' answer key for instructors (default: docs/answer_key.md)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "answer_key.md"))
    p.set_defaults(func=_cmd_answer_key)
    p = sub.add_parser("quiz-scores", help="gather a room's quiz scores (its run folders' quiz_scores.json) in a table")
    p.add_argument("folders", nargs="+", type=Path, help="run folders, or folders that hold them (searched below)")
    p.add_argument("--csv", default="", help="also write the table as CSV to this file ('-': print CSV instead)")
    p.set_defaults(func=_cmd_quiz_scores)
    return parser


def _cmd_answer_key(args: argparse.Namespace) -> int:
    """Write every notebook's quiz answers to one Markdown file."""
    from lab_utils.core.paths import atomic_write_text
    from lab_utils.course.quiz import answer_key_markdown

    print(f"answer key: {atomic_write_text(args.out, answer_key_markdown() + chr(10))}")
    return 0


def _cmd_quiz_scores(args: argparse.Namespace) -> int:
    """Print one row per learner folder: each notebook's score before and after, the gain, and the predictions' hits."""
    from lab_utils.core.paths import atomic_write_text
    from lab_utils.course.quiz import SCORES_FILE
    from lab_utils.course.room import room_csv, room_rows, room_table

    rows = room_rows(args.folders)
    if not rows:
        print(f"no {SCORES_FILE} in or under {', '.join(map(str, args.folders))}", file=sys.stderr)
        return 1
    if args.csv == "-":
        print(room_csv(rows), end="")
        return 0
    print(room_table(rows))
    if args.csv:
        print(f"csv: {atomic_write_text(args.csv, room_csv(rows))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
