"""How close a ranking comes to the forward passes it needs: the library end to end against its floor, in one run.

    python benchmarks/speed.py [--estimators tta cte-dropout] [--rounds 3] [--before CHECKOUT] [--profile]
                               [--device cpu] [--models NAME ...] [--images FOLDER]

For each estimator (default: the default one), these are timed in every round, one after the other; the rounds are
interleaved (each starts with the next configuration), so a machine that gets busier slows them alike:

- after: :func:`bioimage_cte.run.pipeline.rank` on the models and images, as ``bioimage-cte rank`` runs it by
  default (finding and checking the packages and images, each model in its own child process under the default
  time limit, loading it, predicting, consistency, the ranking with its bootstrap intervals);
- before (``--before CHECKOUT``): the same call in a worker process that imports bioimage-cte from another checkout
  (e.g. ``git archive f9367ef | tar -x -C /tmp/before``: main before this work), so that old and new are measured
  side by side in one run;
- in-process: ``after`` with ``time_limit=0``: the models run in this process (no child, no limit);
- general: ``in-process`` with every flipped/rotated view predicted as an image of its own through the model's
  bioimageio.core pipeline (``bioimage_cte.predict.views.SHARED_VIEWS = False``, which a child process would not
  see: the path of models whose preprocessing does not commute with the views, and of every model before);
- batched (``--batched``): ``in-process`` with the views of each image stacked into one batch, the rule on a GPU
  (``--device cuda``), forced here on any device;
- floor: only the forward passes the estimator needs, by hand. Each image decoded once; per model its description
  read (without checks) and its torch network built and loaded; per image the model's normalisation (numpy), the
  library's padding, then the clean pass plus the estimator's views or perturbations through the network and its
  final activation, to a numpy array. No checks, no consistency, no ranking.

It prints the median, min and max wall time over the rounds, the ratio of the medians to the floor's, and the same
ratio of CPU times (this process's, plus its models' child processes'; less sensitive than wall time to other
work on the machine). ``--profile``
adds one in-process run of each library path under cProfile and the share of its time spent in each part
(cProfile slows Python code far more than torch's kernels: the shares of the bookkeeping are upper
bounds). Default: the six nuclei UNets of the demo zoo (2D, one channel, ``pytorch_state_dict`` weights) on the
8 images of ``nuclei-medium-noisy``. Not a test; best run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODELS = ("nuclei-dense-textured", "nuclei-dim-blurry", "nuclei-large-sparse", "nuclei-small-bright",
               "nuclei-touching-instance", "nuclei-versatile")
DEMO_IMAGES = ROOT / "resources" / "data" / "nuclei-medium-noisy" / "images"
#: where the time of one library run goes: (label, file the function is in, function), by cumulative time
PARTS = (
    ("checks before any model loads", "run/pipeline.py", "_inputs"),
    ("model loading (checks, description, weights)", "run/scoring.py", "__init__"),
    ("image decoding (read_image)", "predict/images.py", "read_image"),
    ("preprocessing (bioimageio.core ops)", "core/_prediction_pipeline.py", "apply_preprocessing"),
    ("model adapter: xarray wrapping + forward", "core/_model_adapter.py", "forward"),
    ("  of which the forward passes (torch)", "backends/pytorch_backend.py", "_forward_impl"),
    ("postprocessing (bioimageio.core ops)", "core/_prediction_pipeline.py", "apply_postprocessing"),
    ("consistency (mapped-back views)", "cte/estimators.py", "_per_slice"),
    ("ranking (bootstrap intervals)", "run/ranking.py", "build_ranking"),
)


# --- the library: in this process, or in a worker importing another checkout ---------------------------------------


def library(job: dict, *, shared: bool = True, batched: bool = False, isolated: bool = True) -> tuple[float, float]:
    """Wall and CPU seconds of one :func:`rank` of ``job``'s models on its images (each model in a child process
    under the default time limit, or with ``isolated=False`` in this process; views shared or not; with ``batched``
    the views of an image run as one batch whatever the device)."""
    from bioimage_cte.run.options import RankOptions
    from bioimage_cte.run.pipeline import rank

    views = automatic = None
    if not shared or batched:
        from bioimage_cte.predict import views
        automatic = views.views_batched
        views.SHARED_VIEWS = shared
        if batched:
            views.views_batched = lambda device: (True, "forced by benchmarks/speed.py --batched")
    try:
        limit = {} if isolated else {"time_limit": 0}
        options = RankOptions(estimator=job["estimator"], device=job["device"], seed=job["seed"], **limit)
        wall, cpu = time.perf_counter(), time.process_time() + children_cpu()
        run = rank(job["models"], job["images"], options)
        wall, cpu = time.perf_counter() - wall, time.process_time() + children_cpu() - cpu
    finally:
        if views is not None:
            views.SHARED_VIEWS, views.views_batched = True, automatic
    failed = run.ranking.failures
    if failed:
        raise SystemExit(f"{len(failed)} models failed, e.g. {failed[0].name}: {failed[0].reason}")
    return wall, cpu


def children_cpu() -> float:
    """CPU seconds of the finished child processes of this process's fork server: the models' processes (each is
    reaped by the server when it ends, so /proc counts it in the server's children times); 0 before any."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    stat = Path(f"/proc/{pid}/stat")
    if pid is None or not stat.exists():
        return 0.0
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime + cstime


def profile_shares(job: dict, *, shared: bool = True) -> tuple[float, list[tuple[str, float]]]:
    """One library run under cProfile: its wall time and the share of it in each of :data:`PARTS`."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.runcall(library, job, shared=shared, isolated=False)
    total = time.perf_counter() - start
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    cumulative: dict[tuple[str, str], float] = {}
    for (file, _, func), (_, _, _, cum, _) in stats.items():
        for _, suffix, name in PARTS:
            if func == name and file.replace(os.sep, "/").endswith(suffix):
                cumulative[(suffix, name)] = cumulative.get((suffix, name), 0.0) + cum
    return total, [(label, cumulative.get((suffix, name), 0.0) / total) for label, suffix, name in PARTS]


def worker() -> None:
    """Serve library runs to the main process: one JSON job per stdin line, one JSON answer per stdout line."""
    for line in sys.stdin:
        job = json.loads(line)
        if job.get("profile"):
            total, shares = profile_shares(job)
            print(json.dumps({"wall": total, "shares": shares}), flush=True)
        else:
            wall, cpu = library(job, isolated=job.get("isolated", True))
            print(json.dumps({"wall": wall, "cpu": cpu}), flush=True)


class Before:
    """A worker process running the library of another checkout (``--before``)."""

    def __init__(self, checkout: Path) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(checkout), str(checkout / ".pyalias")])}
        self.process = subprocess.Popen([sys.executable, __file__, "--worker"], env=env, cwd=checkout, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def ask(self, job: dict) -> dict:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise SystemExit("the --before worker stopped; run it alone to see why")
        return json.loads(answer)

    def run(self, job: dict) -> tuple[float, float]:
        answer = self.ask(job)
        return answer["wall"], answer["cpu"]

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait()


# --- the floor -----------------------------------------------------------------------------------------------------


def passes(name: str, seed: int, index: int) -> list[tuple[str, int]]:
    """The forward passes estimator ``name`` needs on image ``index``: ``("view", k)`` (``k`` = 0: clean),
    ``("noise", 0)`` (Gaussian noise on the raw image) and ``("dropout", mask seed)``, with the run's draws."""
    from bioimage_cte.cte.estimators import CTEDihedral, MCDropoutAgreement, TTAAgreement
    from bioimage_cte.cte.seeds import draw_seed

    clean = [("view", 0)]
    dropout = ("dropout", draw_seed(seed, "feature-dropout", image=index))
    view = ("view", CTEDihedral.transform(seed, index))
    table: dict[str, list[tuple[str, int]]] = {
        "tta": clean + [("view", k) for k in TTAAgreement().transforms],
        "cte-dihedral": clean + [view],
        "cte-input": clean + [("noise", 0)],
        "cte-dropout": clean + [dropout],
        "cte": clean + [dropout, view, ("noise", 0)],
        "mc-dropout": clean + [("dropout", draw_seed(seed, "mc-dropout", image=index, repeat=r))
                               for r in range(MCDropoutAgreement().samples)],
        "confidence": clean, "entropy": clean, "random": clean,
    }
    if name not in table:
        raise SystemExit(f"no floor for {name!r}; benchmarked estimators: {', '.join(table)}")
    return table[name]


def _preprocessing(descr) -> tuple[str, float]:
    from bioimage_cte.demozoo.training import PERCENTILES

    op = next(op for op in descr.inputs[0].preprocessing if op.id != "ensure_dtype")
    if op.id == "scale_range" and (op.kwargs.min_percentile, op.kwargs.max_percentile) != PERCENTILES:
        raise SystemExit(f"{descr.name}: the floor normalises with the demo zoo's percentiles {PERCENTILES}")
    if op.id not in ("zero_mean_unit_variance", "scale_range"):
        raise SystemExit(f"{descr.name}: the floor knows zero_mean_unit_variance and scale_range, not {op.id}")
    return op.id, op.kwargs.eps


def floor_layers(job: dict) -> dict[str, str]:
    """The layer dropout perturbs in each model (found once, before any timing, as the library finds it)."""
    if not any(kind == "dropout" for kind, _ in passes(job["estimator"], job["seed"], 0)):
        return {}
    from bioimageio.core.backends.pytorch_backend import load_torch_model
    from bioimageio.spec import load_description

    from bioimage_cte.predict.layers import find_perturbation_layer

    layers = {}
    for location in job["models"]:
        descr = load_description(location, perform_io_checks=False)
        net = load_torch_model(descr.weights.pytorch_state_dict, devices=["cpu"]).eval()
        layers[location] = find_perturbation_layer(net, descr=descr)
    return layers


def floor(job: dict, layers: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of the bare forward passes ``job``'s estimator needs (see the module docstring)."""
    import numpy as np

    from bioimage_cte.predict.images import list_images, read_image

    wall, cpu = time.perf_counter(), time.process_time()
    images = [read_image(p).astype(np.float32) for p in list_images(job["images"])]
    if any(image.ndim != 2 for image in images):
        raise SystemExit("the floor takes 2D one-channel images (y, x)")
    for location in job["models"]:
        _floor_model(location, images, job, layers.get(location))
    return time.perf_counter() - wall, time.process_time() - cpu


def _floor_model(location: str, images: list, job: dict, layer: str | None) -> None:
    """One model's part of the floor: load the network, then every pass on every image."""
    import numpy as np
    import torch
    from bioimageio.core.backends.pytorch_backend import load_torch_model
    from bioimageio.spec import load_description

    from bioimage_cte.cte.perturbations import InputPerturbation, perturb_image
    from bioimage_cte.cte.seeds import rng
    from bioimage_cte.demozoo.training import normalize
    from bioimage_cte.predict.dropout import FeatureDropout
    from bioimage_cte.predict.tiling import pad_centred, plan, spatial_spec
    from bioimage_cte.predict.views import dihedral

    descr = load_description(location, perform_io_checks=False)
    net = load_torch_model(descr.weights.pytorch_state_dict, devices=[job["device"]]).eval()
    method, _ = _preprocessing(descr)
    softmax = any(op.id == "softmax" for op in descr.outputs[0].postprocessing)
    specs = [spatial_spec(descr, a) for a in "yx"]
    drop: dict[str, FeatureDropout] = {}

    def hook(module, args, out):  # the library's grey-box hook: one channel mask per pass
        if "p" not in drop:
            return None
        mask = torch.from_numpy(drop["p"].channel_mask(out.shape[1]))
        return out * mask.view(1, -1, *([1] * (out.ndim - 2))).to(out.device)

    if layer is not None:
        dict(net.named_modules())[layer].register_forward_hook(hook)

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = net(torch.from_numpy(np.ascontiguousarray(x)[None, None]).to(job["device"]))
            out = torch.softmax(out, dim=1) if softmax else torch.sigmoid(out)
            return out.cpu().numpy()

    strength = getattr(_estimator(job["estimator"]), "strength", 0.2)
    for i, image in enumerate(images):
        pad = plan(image.shape, specs, budget=1024**2).pad
        x = pad_centred(normalize(image, method=method), pad)
        for kind, arg in passes(job["estimator"], job["seed"], i):
            if kind == "view":
                forward(dihedral(x, arg))
            elif kind == "noise":
                noisy = perturb_image(image, InputPerturbation("gaussian", 0.1),
                                      rng=rng(job["seed"], "input-gaussian", image=i))
                forward(pad_centred(normalize(noisy, method=method), pad))
            else:
                drop["p"] = FeatureDropout(strength, seed=arg)
                forward(x)
                drop.clear()


def _estimator(name: str):
    from bioimage_cte.run.options import RankOptions

    return RankOptions(estimator=name).make_estimator()


# --- the run -------------------------------------------------------------------------------------------------------


def _summary(times: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    walls = [w for w, _ in times]
    return statistics.median(walls), min(walls), max(walls), statistics.median(c for _, c in times)


def measure(job: dict, rounds: int, before: Before | None, *, batched: bool) -> dict[str, list[tuple[float, float]]]:
    """Every configuration once per round, each round starting with the next one."""
    layers = floor_layers(job)
    configs: dict[str, Callable[[], tuple[float, float]]] = {
        "after": lambda: library(job),
        "in-process": lambda: library(job, isolated=False),
        "general": lambda: library(job, shared=False, isolated=False),
        "floor": lambda: floor(job, layers),
    }
    if batched:
        configs = {**configs, "batched": lambda: library(job, batched=True, isolated=False)}
    if before is not None:
        configs = {"before": lambda: before.run(job), **configs}
    warm = {**job, "models": job["models"][:1]}
    library(warm)  # imports, torch's first call, file caches
    if before is not None:
        before.run(warm)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
    names = list(configs)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(configs[name]())
            print(f"  round {r + 1} {name}: {times[name][-1][0]:.1f} s", file=sys.stderr, flush=True)
    return times


LABELS = {"before": "before ({}): bioimage_cte.rank, default options", "after": "after: bioimage_cte.rank, "
          "default options", "in-process": "after, models in this process (time_limit 0)",
          "general": "after, in-process, every view through the pipeline (the pre-change path)",
          "batched": "after, in-process, the views of an image as one batch",
          "floor": "floor: bare torch forward passes"}


def report(job: dict, times: dict[str, list[tuple[float, float]]], before: Path | None) -> None:
    n_passes = len(passes(job["estimator"], job["seed"], 0))
    print(f"\n{job['estimator']}: {len(job['models'])} models x {job['n_images']} images, {n_passes} forward passes "
          f"per image, device {job['device']}, {len(times['floor'])} interleaved rounds")
    print("\n| | wall s, median (min-max) | / floor | CPU s, median | / floor |")
    print("|---|---|---|---|---|")
    fw, _, _, fc = _summary(times["floor"])
    for name, runs in times.items():
        w, lo, hi, c = _summary(runs)
        label = LABELS[name].format(before) if name == "before" else LABELS[name]
        cpu = f"{c:.1f} | {c / fc:.2f}x"
        print(f"| {label} | {w:.1f} ({lo:.1f}-{hi:.1f}) | {w / fw:.2f}x | {cpu} |")


def report_profile(job: dict, before: Before | None, checkout: Path | None) -> None:
    runs = {"after": profile_shares(job), "general": profile_shares(job, shared=False)}
    if before is not None:
        answer = before.ask({**job, "profile": True})
        runs = {"before": (answer["wall"], [tuple(s) for s in answer["shares"]]), **runs}
    print(f"\nwhere the time of one {job['estimator']} ranking goes (cProfile, cumulative share of the wall time)")
    print("\n| part | " + " | ".join(runs) + " |")
    print("|---|" + "---|" * len(runs))
    for i, (label, _, _) in enumerate(PARTS):
        print(f"| {label} | " + " | ".join(f"{shares[i][1]:.0%}" for _, shares in runs.values()) + " |")
    print("| wall s under cProfile | " + " | ".join(f"{total:.1f}" for total, _ in runs.values()) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--estimators", nargs="+", default=None, help="default: the default estimator")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(DEMO_MODELS), help="names in resources/zoo or paths")
    parser.add_argument("--images", type=Path, default=DEMO_IMAGES)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--before", type=Path, default=None, help="a checkout to time side by side (a worker)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--batched", action="store_true", help="also time the views run as one batch (GPU rule)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker()
    from bioimage_cte.predict.images import list_images
    from bioimage_cte.run.options import RankOptions

    models = [str(m if Path(m).exists() else ROOT / "resources" / "zoo" / f"{m}.zip") for m in args.models]
    before = Before(args.before.resolve()) if args.before else None
    try:
        for name in args.estimators or [RankOptions().estimator]:
            job = {"estimator": name, "models": models, "images": str(args.images), "device": args.device,
                   "seed": args.seed, "n_images": len(list_images(args.images))}
            times = measure(job, args.rounds, before, batched=args.batched)
            report(job, times, args.before)
            if args.profile:
                report_profile(job, before, args.before)
    finally:
        if before is not None:
            before.close()


if __name__ == "__main__":
    main()
