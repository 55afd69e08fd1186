"""Hostile input must fail fast and small: a YAML alias bomb in a model package, a TIFF declaring 40000 x 40000 px.

    python benchmarks/hostile_input.py [--keep DIR]

Each case runs ``bioimage-cte rank`` (``python -m bioimage_cte.cli``) in a fresh process on a temp folder:

- yaml-bomb: a copy of the demo package ``nuclei-small-bright`` whose rdf.yaml is replaced by a ~0.5 kB
  alias bomb (10 levels of 9 aliases: 3.5e9 nodes once expanded), ranked on one small good image;
- tiff-bomb: the good package, ranked on a folder holding a ~3 MB tiled, zlib-compressed uint16 TIFF
  whose header declares 40000 x 40000 px (3.2 GB decoded).

Wall time is measured around the child; peak resident memory is ``ru_maxrss`` of that child alone,
from ``os.wait4``. The bars: each case is refused with the expected one-line reason within 5 s and under
500 MB, for the whole command. A bad model does not stop a run (it is listed as failed); here it is the only
model, so nothing can be ranked (exit code 3). A bad image stops the run before any model loads (exit code 1).

Both include starting Python and importing the CLI. ``rank`` checks every package (zip members, rdf.yaml
bounds) and every image header before it imports torch or bioimageio.core, so neither case imports them. The
control case (a package whose rdf.yaml is plain invalid YAML, refused on the same path) measures that fixed
cost, and the last line times the refusal itself inside one process, after the imports.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "resources" / "zoo" / "nuclei-small-bright.zip"
MAX_SECONDS = 5.0
MAX_RSS_MB = 500.0


def yaml_bomb(levels: int = 10, width: int = 9) -> str:
    """``levels`` anchors, each a list of ``width`` aliases to the one before."""
    lines = [f"l0: &l0 [{', '.join(['x'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "type: model\n" + "\n".join(lines) + "\n"


def with_rdf(src: Path, dst: Path, rdf_text: str) -> Path:
    """``src`` with its rdf.yaml replaced by ``rdf_text``; every other file kept."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for name in zin.namelist():
            zout.writestr(name, rdf_text if name == "rdf.yaml" else zin.read(name))
    return dst


def tiff_bomb(path: Path, *, side: int = 40000, tile: int = 512) -> Path:
    """A tiled, zlib-compressed uint16 TIFF of ``side`` x ``side`` zeros, written from one pre-compressed tile."""
    block = zlib.compress(np.zeros((tile, tile), np.uint16).tobytes())
    n_tiles = (-(-side // tile)) ** 2
    tifffile.imwrite(path, (block for _ in range(n_tiles)), shape=(side, side), dtype=np.uint16,
                     tile=(tile, tile), compression="zlib")
    return path


# the refusals alone, after the imports, in one process: what the bomb costs beyond starting up
_IN_PROCESS = """
import sys, time
from pathlib import Path
from bioimage_cte.base.errors import BioimageCteError
from bioimage_cte.predict.images import read_image
from bioimage_cte.zoo.rdf_checks import precheck_package
for name, call in (("precheck_package(yaml-bomb)", lambda: precheck_package(sys.argv[1])),
                   ("read_image(tiff-bomb)", lambda: read_image(Path(sys.argv[2])))):
    start = time.perf_counter()
    try:
        call()
    except BioimageCteError as e:
        print(f"{name}: refused in {(time.perf_counter() - start) * 1000:.0f} ms ({type(e).__name__})")
"""


def run(args: list[str], *, module: bool = True) -> tuple[int, float, float, str]:
    """(exit code, wall seconds, peak RSS in MB, stderr + stdout) of one fresh ``bioimage-cte`` process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "COLUMNS": "200"}
    command = [sys.executable, "-m", "bioimage_cte.cli", *args] if module else [sys.executable, "-c", *args]
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = child.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    return child.returncode, seconds, usage.ru_maxrss / 1024, output  # ru_maxrss is in kB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build the cases in this folder and keep them")
    options = parser.parse_args()
    work = options.keep or Path(tempfile.mkdtemp(prefix="hostile-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        good_images, huge_images = work / "good-images", work / "huge-images"
        good_images.mkdir(exist_ok=True)
        huge_images.mkdir(exist_ok=True)
        tifffile.imwrite(good_images / "img.tif", np.random.default_rng(0).normal(100, 20, (64, 64)).astype(np.float32))
        bomb = with_rdf(PACKAGE, work / "yaml-bomb.zip", yaml_bomb())
        broken = with_rdf(PACKAGE, work / "broken-yaml.zip", "type: model\ninputs: [raw\n")
        huge = tiff_bomb(huge_images / "huge.tif")
        cases = {
            "yaml-bomb": (["rank", str(bomb), "--images", str(good_images)], "expands to more than 100000 YAML nodes"),
            "control: broken YAML": (["rank", str(broken), "--images", str(good_images)], "is not valid YAML"),
            "tiff-bomb": (["rank", str(PACKAGE), "--images", str(huge_images)], "has 1600000000 pixel values"),
        }
        print(f"yaml-bomb: rdf.yaml of {len(yaml_bomb())} bytes; tiff-bomb: {huge.stat().st_size / 1e6:.1f} MB file "
              f"declaring 40000 x 40000 uint16\n")
        print(f"| case | exit | wall (s) | peak RSS (MB) | < {MAX_SECONDS:.0f} s | < {MAX_RSS_MB:.0f} MB | reason |")
        print("|---|---|---|---|---|---|---|")
        failed = False
        for name, (args, expected) in cases.items():
            code, seconds, rss, output = run(args)
            reason = next((line for line in output.splitlines() if expected in line), None)
            fast, small = seconds < MAX_SECONDS, rss < MAX_RSS_MB
            failed |= not (reason and fast and small)
            shown = reason.strip() if reason else f"NOT REFUSED AS EXPECTED: {output.strip()[-300:]}"
            print(f"| {name} | {code} | {seconds:.2f} | {rss:.0f} | {'yes' if fast else 'NO'} | "
                  f"{'yes' if small else 'NO'} | {shown} |")
        print()
        print(run([_IN_PROCESS, str(bomb), str(huge)], module=False)[3].strip())
        sys.exit(1 if failed else 0)
    finally:
        if options.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
