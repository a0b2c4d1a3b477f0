"""The lab report and the run comparison, on recorded results written by hand into temporary run folders."""

from __future__ import annotations

import json
from pathlib import Path

from lab_utils import report


def make_run(folder: Path, loss: float, tps: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(
        json.dumps(
            {
                "00_setup": {"profile": "pocket", "device": "cpu", "device_name": "AMD", "versions": {"trl": "1.16.0"}},
                "02_sft": {
                    "train_loss_last": loss,
                    "method": "lora",
                    "sft_benchmark": [{"mode": "lab", "tokens_per_s": tps}],
                },
            }
        )
    )
    (folder / "figures").mkdir()
    (folder / "figures" / "02_loss.png").write_bytes(b"\x89PNG")
    (folder / "02_sft.ipynb").write_text("{}")
    return folder


def test_report_lists_figures_plots_links_and_versions(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r1", 0.9, 3000.0)
    html_path, md_path = report.write_report(run)
    md = md_path.read_text()
    assert "Profile **pocket** on **cpu**" in md
    assert "| train_loss_last | 0.9 |" in md and "| sft_benchmark.mode=lab.tokens_per_s | 3000 |" in md
    assert "![02_loss](figures/02_loss.png)" in md and "[executed notebook](02_sft.ipynb)" in md
    assert "| trl | 1.16.0 |" in md
    page = html_path.read_text()
    assert "<img src='figures/02_loss.png'" in page and "href='02_sft.ipynb'" in page


def test_compare_runs_gives_ratios(tmp_path: Path) -> None:
    a = make_run(tmp_path / "cpu", 1.0, 1000.0)
    b = make_run(tmp_path / "gpu", 0.8, 50000.0)
    rows = {r["figure"]: r for r in report.compare_runs(a, b)}
    assert rows["02_sft.sft_benchmark.mode=lab.tokens_per_s"]["b/a"] == 50.0
    assert rows["02_sft.train_loss_last"]["b/a"] == 0.8
    assert "02_sft.method" not in rows  # equal non-numeric values are left out
    assert "50" in report.compare_runs_text(a, b)
