#!/usr/bin/env python3
"""`make gpu-check-prep`: the wheels the GPU check needs that the lent GPU machine lacks, into `.gpu-check/wheels/`
(ignored), trimmed to fit the 64 MiB a session may carry besides the tree.

The machine has torch, transformers, peft and accelerate (and so numpy, PyYAML, jinja2, psutil, fsspec...). The check
also needs TRL (the lab's trainer) and bitsandbytes (QLoRA). TRL's SFTTrainer imports `datasets` when its module loads
(trl/trainer/sft_trainer.py, trl/data_utils.py), and datasets imports pyarrow and pandas when it loads: no TRL without
them. So the list is TRL, datasets and their dependencies missing there, each at the version pinned in pyproject.toml or
installed in this venv (`pip download --no-deps`, one name at a time, nothing resolved):
  - pure Python: trl, datasets, dill, fsspec, python-dateutil, tzdata;
  - built for one Python (`--python`, default 3.12; the machine's is unknown): pyarrow, pandas, xxhash, multiprocess.
    pyarrow (55 MB) is trimmed to what datasets loads: no Arrow Flight, no S3 (`pyarrow.fs` imports S3 only if it
    can), no C++ headers, Cython sources or tests, one copy of each shared library; pandas without its tests. A
    repacked wheel keeps every library a kept library links to (read from the ELF files' DT_NEEDED entries);
  - bitsandbytes (43 MB, every CUDA, ROCm and XPU library) keeps only the CUDA libraries named by `--cuda` (default
    128,130: 12.8 for a CUDA 12 torch, 13.0 for a CUDA 13 one; bitsandbytes loads the closest library of the torch's
    CUDA major version, e.g. 12.8 for a 12.6 torch) and its CPU library.
On a machine whose Python is not the one prepared for, the built wheels do not fit: the check says so on its `env` line
and the stages that need TRL or bitsandbytes skip, naming what is missing (`make gpu-check-prep GPU_CHECK_PYTHON=3.11`).

Usage: python scripts/gpu_check_prep.py [--python 3.12] [--cuda 128,130] [--dest .gpu-check]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import tomllib

ROOT = Path(__file__).resolve().parent.parent
PURE = ("trl", "datasets", "dill", "fsspec", "python-dateutil", "tzdata", "bitsandbytes")
PER_PYTHON = ("pyarrow", "pandas", "xxhash", "multiprocess")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
BUDGET_MIB = 64.0
MIB = 2**20
PYARROW_DIRS = {"include", "includes", "src", "tests"}
PYARROW_DROPPED = re.compile(r".*(flight|_s3|s3fs|_pyarrow_cpp_tests).*|.*\.(pyx|pxd|pxi)$")


def pinned_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Each name's version: the exact pin in pyproject.toml, else the version installed where this runs (the venv)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {m.group(1).lower(): m.group(2) for d in deps if (m := re.fullmatch(r"([\w.-]+)==([\w.+-]+)", d.strip()))}
    versions = {}
    for name in names:
        try:
            versions[name] = pins.get(name) or metadata.version(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(
                f"{name}: not pinned in pyproject.toml nor installed here (run `make setup` first)"
            ) from None
    return versions


def dropped(dist: str, path: str, names: set[str], cuda: tuple[str, ...]) -> bool:
    """Whether the repacked wheel of `dist` leaves out the file at `path` (`names`: every file name in the wheel)."""
    name = path.rsplit("/", 1)[-1]
    if dist == "bitsandbytes":
        lib = re.fullmatch(r"libbitsandbytes_([a-z]+)(\d*)\.so", name)
        return bool(lib) and lib.group(1) != "cpu" and not (lib.group(1) == "cuda" and lib.group(2) in cuda)
    if dist == "pandas":
        return "/tests/" in f"/{path}"
    if dist == "pyarrow":
        if set(path.split("/")[1:-1]) & PYARROW_DIRS or PYARROW_DROPPED.fullmatch(name):
            return True
        copy = re.fullmatch(r"(lib\w+)\.so(\.\d+\.\d+\.\d+)?", name)  # a link-time copy of a library kept by SONAME
        return bool(copy) and any(re.fullmatch(re.escape(copy.group(1)) + r"\.so\.\d+", n) for n in names)
    return False


def elf_needed(data: bytes) -> list[str]:
    """The DT_NEEDED entries (shared libraries it links to) of a 64-bit ELF file; [] for anything else."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return []
    end = "<" if data[5] == 1 else ">"
    (shoff,) = struct.unpack_from(end + "Q", data, 0x28)
    shentsize, shnum = struct.unpack_from(end + "HH", data, 0x3A)
    sections = [struct.unpack_from(end + "IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    needed = []
    for _, kind, _, _, offset, size, link, *_ in sections:
        if kind != 6:  # SHT_DYNAMIC
            continue
        strings = sections[link][4]
        for pos in range(offset, offset + size, 16):
            tag, value = struct.unpack_from(end + "qQ", data, pos)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                start = strings + value
                needed.append(data[start : data.index(b"\0", start)].decode())
    return needed


def repack(wheel: Path, out: Path, cuda: tuple[str, ...]) -> dict[str, Any]:
    """Write `wheel` to `out` without the files `dropped` names (and their RECORD lines); raise if a kept shared
    library links to a dropped one. Returns what was dropped."""
    dist = wheel.name.split("-")[0].lower().replace("_", "-")
    with zipfile.ZipFile(wheel) as src:
        infos = src.infolist()
        names = {i.filename.rsplit("/", 1)[-1] for i in infos}
        gone = {i.filename for i in infos if dropped(dist, i.filename, names, cuda)}
        gone_names = {g.rsplit("/", 1)[-1] for g in gone}
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in infos:
                if info.filename in gone:
                    continue
                data = src.read(info)
                broken = [lib for lib in elf_needed(data) if lib in gone_names]
                if broken:
                    raise SystemExit(f"{wheel.name}: {info.filename} links to {broken}, which the trim drops")
                if info.filename.endswith(".dist-info/RECORD"):
                    rows = data.decode().splitlines()
                    data = "\n".join(r for r in rows if r.split(",", 1)[0] not in gone).encode() + b"\n"
                dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return {"files": len(gone), "mib_before": round(wheel.stat().st_size / MIB, 2)}


def pip_download(specs: list[str], dest: Path, python: str) -> None:
    """`pip download --no-deps` of exactly these wheels for Linux x86-64 and the given Python."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    cmd += ["--python-version", python, "--implementation", "cp"]
    cmd += [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    print("$", " ".join(cmd[3:7]), "...", " ".join(specs), flush=True)
    subprocess.run([*cmd, *specs], check=True, stdout=subprocess.DEVNULL)


def prepare(dest: Path, pythons: list[str], cuda: tuple[str, ...], budget: float) -> dict[str, Any]:
    """Download, trim and measure; the manifest (also written to dest/manifest.json)."""
    versions = pinned_versions(PURE + PER_PYTHON)
    wheels = dest / "wheels"
    shutil.rmtree(dest, ignore_errors=True)
    wheels.mkdir(parents=True)
    trimmed: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        pip_download([f"{n}=={versions[n]}" for n in PURE], raw, pythons[0])
        for python in pythons:
            pip_download([f"{n}=={versions[n]}" for n in PER_PYTHON], raw, python)
        for wheel in sorted(raw.glob("*.whl")):
            dist = wheel.name.split("-")[0].lower().replace("_", "-")
            if dist in ("bitsandbytes", "pyarrow", "pandas"):
                trimmed[wheel.name] = repack(wheel, wheels / wheel.name, cuda)
            else:
                shutil.copy2(wheel, wheels / wheel.name)
    sizes = {w.name: w.stat().st_size for w in sorted(wheels.glob("*.whl"))}
    total = sum(sizes.values()) / MIB
    manifest = {"python": pythons, "cuda": list(cuda), "versions": versions, "total_mib": round(total, 2)}
    manifest |= {"budget_mib": budget, "wheels": sizes, "trimmed": trimmed}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Prepare the wheels, print their sizes and total, and fail if the total is over the budget."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python(s), comma-separated")
    parser.add_argument("--cuda", default="128,130", help="bitsandbytes CUDA libraries to keep, e.g. 128,130 or 130")
    parser.add_argument("--dest", default=str(ROOT / ".gpu-check"))
    parser.add_argument("--budget-mib", type=float, default=BUDGET_MIB)
    args = parser.parse_args(argv)
    pythons = [p.strip() for p in args.python.split(",") if p.strip()]
    cuda = tuple(c.strip().replace(".", "") for c in args.cuda.split(",") if c.strip())
    manifest = prepare(Path(args.dest), pythons, cuda, args.budget_mib)
    for name, size in manifest["wheels"].items():
        trim = manifest["trimmed"].get(name)
        note = f" (from {trim['mib_before']} MiB: {trim['files']} files left out)" if trim else ""
        print(f"{size / MIB:8.2f} MiB  {name}{note}")
    total = manifest["total_mib"]
    print(f"{total:8.2f} MiB  in {args.dest} (budget {args.budget_mib:g} MiB; Python {args.python}; CUDA {args.cuda})")
    if total > args.budget_mib:
        print(f"over the {args.budget_mib:g} MiB budget: keep fewer CUDA libraries or Pythons", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
