"""Peak memory of a large ranking against a small one: it must not grow with the number of models or images.

    python benchmarks/memory.py [--large 40x100] [--small 4x10] [--path both|rank|store|volume] [--keep DIR]
    python benchmarks/memory.py --path volume [--volume-small 256x256x32] [--volume-large 512x512x64]

Each ranking runs in a fresh Python process; its peak resident memory is read twice, from the child's own
``VmHWM`` (/proc/self/status, what the ranking itself reached) and from ``os.wait4``'s ``ru_maxrss`` in the parent.
The issue asks the 40-model x 100-image peak to stay within 1.5x of the 4-model x 10-image peak.

Two paths, as a user and as a zoo maintainer run them:

- rank: :func:`bioimage_cte.run.pipeline.rank`, what ``bioimage-cte rank`` runs (every image checked once, then
  :func:`~bioimage_cte.run.scoring.rank_models` and :func:`~bioimage_cte.run.ranking.build_ranking`);
- store: :func:`bioimage_cte.run.jobs.plan_jobs`, :func:`~bioimage_cte.run.jobs.score_job` per model and
  :func:`~bioimage_cte.run.jobs.rank_target` over a fresh results store: what each Prefect task of
  ``bioimage_cte_flows.zoo_ranking`` does, without Prefect (its temporary server is a separate process and is
  not the ranking's memory).

Models: copies of four demo-zoo packages (the largest nuclei instance model, the brightfield instance model, a
nuclei and an EM model), cycled and each copy made a distinct package by its rdf.yaml description, so the store
really scores every copy. Images: 64 x 64 tiles (the models' smallest input) of the four real DSB2018 images
(64 tiles) under the eight flips/rotations (512 distinct images), the first N used: small tiles keep 40 x 100
affordable on 2 cores. Options: ``RankOptions(estimator="cte-dropout")`` (one clean and one perturbed prediction per
image), the same for both paths. Results go to ``benchmarks/results/memory.md`` by hand. A smoke run:
``--small 1x1 --large 2x2``.

- volume (issue #14): one 3D ranking (:func:`bioimage_cte.run.pipeline.rank`, ``cte-dropout``) of a 3D model on one
  z-stack, X x Y x Z given by ``--volume-small`` / ``--volume-large``; the issue asks 512x512x64 to stay within
  1.5x of 256x256x32. The model is a seeded, untrained 3D TinyNet package (zyx input, 16 features, per-image
  zero-mean-unit-variance preprocessing,
  :mod:`bioimage_cte.demozoo.shapes`) and the stack is synthetic (Gaussian blobs on noise, uint16): what is
  measured is how the prediction path's memory grows with the volume (tiles of at most ``max_tile ** 2``
  voxels, whole-volume arrays), not a model's quality.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("nuclei-touching-instance", "cells-brightfield-instance", "nuclei-versatile", "em-clean-large")
TILE = 64


def _vmhwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


# --- inputs ---------------------------------------------------------------------------------------------------


def make_zoo(folder: Path, n: int) -> Path:
    """``n`` distinct packages: the demo packages of MODELS cycled, each with its own rdf.yaml description."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        name = MODELS[i % len(MODELS)]
        with zipfile.ZipFile(ROOT / "resources" / "zoo" / f"{name}.zip") as zin, \
                zipfile.ZipFile(folder / f"m{i:02d}-{name}.zip", "w", zipfile.ZIP_DEFLATED) as zout:
            for info in zin.infolist():
                data = zin.read(info)
                if info.filename == "rdf.yaml":
                    # another package by content (store key), the same model otherwise
                    data = data.replace(b"\ndescription: ", f"\ndescription: (memory benchmark copy {i}) ".encode(),
                                        1)
                zout.writestr(info, data)
    return folder


def make_images(folder: Path, n: int) -> Path:
    """``n`` 64 x 64 tiles of the DSB2018 images, under flips and rotations."""
    import numpy as np
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((ROOT / "resources" / "data" / "dsb2018" / "images").glob("*.tif"))
    tiles = []
    for path in sources:
        image = tifffile.imread(path)
        for y in range(0, image.shape[0] - TILE + 1, TILE):
            for x in range(0, image.shape[1] - TILE + 1, TILE):
                tiles.append(image[y:y + TILE, x:x + TILE])
    variants = [lambda a, k=k, f=f: np.rot90(a[:, ::-1] if f else a, k) for f in (False, True) for k in range(4)]
    count = 0
    for variant in variants:
        for tile in tiles:
            if count == n:
                return folder
            tifffile.imwrite(folder / f"tile_{count:03d}.tif", np.ascontiguousarray(variant(tile)))
            count += 1
    if count < n:
        raise SystemExit(f"only {count} distinct tiles; ask for at most {count} images")
    return folder


# --- one ranking, in the child process -----------------------------------------------------------------------


def make_volume_case(folder: Path, shape_xyz: tuple[int, int, int]) -> tuple[Path, Path]:
    """A zoo with one 3D TinyNet package and a target with one synthetic uint16 (z, y, x) stack."""
    import numpy as np
    import tifffile
    from scipy import ndimage

    from bioimage_cte.demozoo.shapes import build_shaped_package

    zoo = folder / "zoo"
    build_shaped_package(zoo / "tiny-3d.zip", spatial="zyx", features=16, normalize=True, name="tiny 3d memory")
    x, y, z = shape_xyz
    rng = np.random.default_rng(0)
    volume = np.zeros((z, y, x), np.float32)
    n = max(1, x * y * z // 20000)  # the same blob density at every size
    volume[rng.integers(0, z, n), rng.integers(0, y, n), rng.integers(0, x, n)] = 1.0
    volume = ndimage.gaussian_filter(volume, 3.0)
    volume = volume / volume.max() * 3000 + rng.normal(300, 30, volume.shape).astype(np.float32)
    images = folder / "target" / "images"
    images.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(images / "stack.tif", np.clip(volume, 0, 65535).astype(np.uint16))
    return zoo, images


def run_child(path: str, zoo: Path, images: Path, store: Path) -> dict:
    from bioimage_cte.predict.images import list_images
    from bioimage_cte.run.options import RankOptions
    from bioimage_cte.zoo.sources import find_models

    start = time.perf_counter()
    options = RankOptions(estimator="cte-dropout")
    if path in ("rank", "volume"):
        from bioimage_cte.run.pipeline import rank

        run = rank([zoo], images, options)
        n_models, scored, failed = len(run.sources), len(run.ranking.scores), len(run.ranking.failures)
    else:
        from bioimage_cte.run.jobs import plan_jobs, rank_target, read_target, score_job
        from bioimage_cte.run.store import ResultStore

        sources = find_models([zoo])
        n_models = len(sources)
        spec = read_target(images.parent)
        jobs = plan_jobs(sources, [spec], options)
        result_store = ResultStore(store)
        for job in jobs:
            score_job(job, result_store)
        payload = rank_target(spec, jobs, result_store, options)
        scored, failed = len(payload["models"]), len(payload["failures"])
    return {"path": path, "models": n_models, "images": len(list_images(images)), "scored": scored,
            "failed": failed, "seconds": time.perf_counter() - start, "vmhwm_kib": _vmhwm_kib()}


# --- parent ----------------------------------------------------------------------------------------------------


def measure(path: str, n_models: int, n_images: int, work: Path,
            volume: tuple[int, int, int] | None = None) -> dict:
    """Run one ranking in a fresh process; its report plus the kernel's peak RSS of that process."""
    if volume is not None:
        case = work / f"{path}-{'x'.join(map(str, volume))}"
        zoo, images = make_volume_case(case, volume)
    else:
        case = work / f"{path}-{n_models}x{n_images}"
        zoo = make_zoo(case / "zoo", n_models)
        images = make_images(case / "target" / "images", n_images)
    env = {**os.environ, "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, __file__, "--child", path, "--zoo", str(zoo), "--images", str(images),
               "--store", str(case / "results.sqlite")]
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{path} {n_models}x{n_images} failed (exit {child.returncode})")
    report = json.loads(out.strip().splitlines()[-1])
    report.update(wall=time.perf_counter() - start, maxrss_kib=usage.ru_maxrss)
    if report["scored"] != n_models:
        raise SystemExit(f"{path} {n_models}x{n_images}: only {report['scored']} models ranked: {report}")
    return report


def _size(text: str) -> tuple[int, int]:
    models, images = text.lower().split("x")
    return int(models), int(images)


def _volume(text: str) -> tuple[int, int, int]:
    x, y, z = (int(v) for v in text.lower().split("x"))
    return x, y, z


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", type=_size, default=(40, 100), help="MODELSxIMAGES (default 40x100)")
    parser.add_argument("--small", type=_size, default=(4, 10), help="MODELSxIMAGES (default 4x10)")
    parser.add_argument("--path", choices=("both", "rank", "store", "volume"), default="both")
    parser.add_argument("--volume-small", type=_volume, default=(256, 256, 32), help="XxYxZ (default 256x256x32)")
    parser.add_argument("--volume-large", type=_volume, default=(512, 512, 64), help="XxYxZ (default 512x512x64)")
    parser.add_argument("--keep", type=Path, default=None, help="Work in this folder and keep it.")
    parser.add_argument("--child", choices=("rank", "store", "volume"), help=argparse.SUPPRESS)
    parser.add_argument("--zoo", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--images", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.zoo, args.images, args.store)), flush=True)
        return

    paths = ("rank", "store") if args.path == "both" else (args.path,)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        print("| path | models x images | peak RSS (VmHWM) | ru_maxrss | wall | ranked |")
        print("|---|---|---|---|---|---|")
        ratios = {}
        for path in paths:
            peaks = []
            cases = ((args.small, None), (args.large, None)) if path != "volume" else \
                (((1, 1), args.volume_small), ((1, 1), args.volume_large))
            for (n_models, n_images), volume in cases:
                r = measure(path, n_models, n_images, work, volume)
                peaks.append(r["vmhwm_kib"])
                size = f"{n_models} x {n_images}" if volume is None else f"1 x {'x'.join(map(str, volume))} stack"
                print(f"| {path} | {size} | {r['vmhwm_kib'] / 1024:.0f} MiB | "
                      f"{r['maxrss_kib'] / 1024:.0f} MiB | {r['wall']:.0f} s | {r['scored']} |", flush=True)
            ratios[path] = peaks[1] / peaks[0]
        print()
        for path, ratio in ratios.items():
            verdict = "ok" if ratio <= 1.5 else "OVER the 1.5x limit"
            print(f"{path}: large / small peak = {ratio:.2f}x ({verdict})")


if __name__ == "__main__":
    main()
