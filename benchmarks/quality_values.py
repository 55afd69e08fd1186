"""Per-image values of every label-free signal, computed once, from which ranking_quality derives every estimator.

    python benchmarks/quality_values.py --set shipped|held-out|new-held-out [--seeds 0 1 2 3 4] [--images N]
                                        [--targets FIRST STOP] [--output benchmarks/results/quality_values_<set>.json]
    python benchmarks/quality_values.py --merge OUT.json PART.json [PART.json ...]

Each model of a target's task is loaded once, grey-box, with one torch thread (two benchmark processes share the
two cores; two threads per process were 6x slower on the loaded machine). Per image it is predicted clean once (true
Dice, confidence, entropy, the clean mask for consensus, and ``tta``'s three fixed transforms: none of these depends
on the run seed); then, per run seed, one feature-dropout pass (rate 0.2) and one Gaussian-noise pass (0.1 of the
range), and the seeded dihedral pass (its prediction depends only on the drawn element, so each element is predicted
once per image and shared by the seeds and by ``tta``). Each pass is recorded as soft and hard consistency with the
clean prediction and as the fraction of the clean foreground the perturbed mask keeps. ``--grid`` adds, on the
first :data:`~bioimage_cte.run.strength.CHOICE_IMAGES` images of each seed's order, the other strengths of
:data:`~bioimage_cte.run.strength.STRENGTH_GRIDS` (what the automatic strength looks at), and the chosen strength on
every image.

Calibration twins: for each model, a sharper (logits x4) and a softer (logits x0.25) twin, as if the package's last
layer were scaled by that factor (the head is a 1x1 convolution, so its logits scale exactly). Every perturbation
acts upstream of the head, so a twin's clean and perturbed probabilities are ``sigmoid(factor * logit(p))`` of the
original's: the twins cost no forward pass. Their masks equal the original's (same true Dice); only calibration
differs. The ``task+calibration`` pool adds two of them per task (:data:`TWINS`): a weak model made over-confident,
a good one made under-confident, chosen by name before any result was seen.

Every estimator of the benchmark -- each family alone at its default or at the automatically chosen strength, the
combined ``cte``, the adaptive budget -- is then a function of these numbers, so no model runs twice for two
estimators. Draws are the library's (:mod:`bioimage_cte.cte.seeds`): the values are exactly
those ``rank`` computes with the same seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).parent))

from bioimage_cte.base.errors import BioimageCteError  # noqa: E402
from bioimage_cte.cte.consistency import hard_consistency, soft_consistency  # noqa: E402
from bioimage_cte.cte.estimators import (  # noqa: E402
    ConsensusAgreement,
    CTEDihedral,
    CTEDropout,
    CTEInput,
    MeanConfidence,
    NegativeEntropy,
    TTAAgreement,
)
from bioimage_cte.cte.metrics import foreground_dice  # noqa: E402
from bioimage_cte.cte.perturbations import dihedral, undo_dihedral  # noqa: E402
from bioimage_cte.predict.images import list_images, load_labels, load_target, target_task  # noqa: E402
from bioimage_cte.predict.segmentation import Prediction  # noqa: E402
from bioimage_cte.run.budget import image_order  # noqa: E402
from bioimage_cte.run.strength import CHOICE_IMAGES, STRENGTH_GRIDS, choose_strength  # noqa: E402
from bioimage_cte.studies.transfer import find_targets  # noqa: E402
from bioimage_cte.zoo.sources import filter_by_tag, find_models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


#: Per task: (model, logit factor) of the calibration twins in the ``task+calibration`` pool.
TWINS: dict[str, tuple[tuple[str, float], ...]] = {
    "nuclei": (("weak-nuclei-undertrained", 4.0), ("nuclei-versatile", 0.25)),
    "cells": (("cells-lowcontrast", 4.0), ("cells-brightfield", 0.25)),
    "mitochondria": (("em-vesicles", 4.0), ("em-organelles", 0.25)),
}
DEFAULTS = {"dropout": 0.2, "noise": 0.1}
#: families left out of a run (``--skip-families``): their values are nan
SKIP_FAMILIES: set[str] = set()
#: ``--save-arrays DIR``: per target, the clean probabilities (uint8), images and labels as DIR/<target>.npz
SAVE_ARRAYS: list[Path] = []


def twin_name(name: str, factor: float) -> str:
    return f"{name}-{'sharp' if factor > 1 else 'soft'}x{factor:g}"


def scaled(p: np.ndarray, factor: float) -> np.ndarray:
    """The probabilities of the same network with its logits multiplied by ``factor``."""
    q = np.clip(p.astype(np.float64), 1e-12, 1 - 1e-12)
    return (1.0 / (1.0 + np.exp(-factor * np.log(q / (1 - q))))).astype(np.float32)


def key(family: str, strength: float | None) -> str:
    return family if strength is None else f"{family}@{strength:g}"


class _Record:
    """Per-image values of one model (and of its twins, keyed by factor)."""

    def __init__(self, factors: tuple[float, ...]):
        self.factors = (1.0, *factors)
        self.rows = {f: {"true": [], "confidence": [], "entropy": [], "tta": [], "foreground": [], "seeds": {}}
                     for f in self.factors}

    def clean(self, clean: np.ndarray, labels: np.ndarray, tta_backs: list[np.ndarray]) -> None:
        conf, ent = MeanConfidence(), NegativeEntropy()
        for f in self.factors:
            p = clean if f == 1.0 else scaled(clean, f)
            row = self.rows[f]
            pred = Prediction(p)
            row["true"].append(foreground_dice(p, labels))
            row["foreground"].append(float((p > 0.5).mean()))
            row["confidence"].append(conf.score_image(None, None, pred, seed=0, index=0))
            row["entropy"].append(ent.score_image(None, None, pred, seed=0, index=0))
            # hard agreement does not change with the logit scale
            row["tta"].append(float(np.mean([hard_consistency(p, b) for b in tta_backs])) if tta_backs else np.nan)

    def perturbed(self, seed: int, name: str, image: int, clean: np.ndarray, perturbed: np.ndarray | None) -> None:
        """``perturbed`` None: this pass cannot run on the model (dropout on a black-box package), nan."""
        for f in self.factors:
            if perturbed is None:
                cell = self.rows[f]["seeds"].setdefault(str(seed), {}).setdefault(name, {})
                for what in ("soft", "hard", "keep"):
                    cell.setdefault(what, {})[image] = float("nan")
                continue
            c, q = (clean, perturbed) if f == 1.0 else (scaled(clean, f), scaled(perturbed, f))
            n_clean = int((c > 0.5).sum())
            cell = self.rows[f]["seeds"].setdefault(str(seed), {}).setdefault(name, {})
            for what, value in (("soft", soft_consistency(c, q)), ("hard", hard_consistency(c, q)),
                                ("keep", float((q > 0.5).sum() / n_clean) if n_clean else float("nan"))):
                cell.setdefault(what, {})[image] = value


def measure_model(source, paths, labels, seeds: list[int], factors: tuple[float, ...], *, grid: bool,
                  families_only: bool = False, clean_only: bool = False) -> tuple[dict[float, dict], list[np.ndarray]]:
    """Every per-image value of one model and its twins (by factor); also its clean foreground probabilities."""
    from bioimage_cte.predict.factory import make_predictor
    from bioimage_cte.zoo.models import load_model

    try:
        predictor = make_predictor(load_model(source.location), name=source.location, greybox=True, layer=None,
                                   devices=["cpu"], weight_format=None)
        greybox = True
    except BioimageCteError:  # a black-box package (e.g. torchscript/onnx only): no dropout family, nan there
        predictor = make_predictor(load_model(source.location), name=source.location, greybox=False, layer=None,
                                   devices=["cpu"], weight_format=None)
        greybox = False
    record = _Record(factors)
    images = [load_target(p) for p in paths]
    cleans = []
    with predictor:
        for i, image in enumerate(images):
            clean = predictor.predict(image).foreground
            cleans.append(clean)
            flips = {}
            for k in () if families_only else TTAAgreement().transforms:
                flips[k] = np.ascontiguousarray(undo_dihedral(predictor.predict(
                    np.ascontiguousarray(dihedral(image, k))).foreground, k))
            record.clean(clean, labels[i], list(flips.values()))
            for seed in () if clean_only else seeds:
                k = CTEDihedral.transform(seed, i)
                if k not in flips:  # the element's prediction does not depend on the seed that drew it
                    flips[k] = CTEDihedral().perturbed_prediction(predictor, image, seed=seed, index=i).foreground
                record.perturbed(seed, "dihedral", i, clean, flips[k])
                for family, strength in DEFAULTS.items():
                    if (family == "dropout" and not greybox) or family in SKIP_FAMILIES:
                        record.perturbed(seed, key(family, strength), i, clean, None)
                        continue
                    est = CTEDropout(strength=strength) if family == "dropout" else CTEInput(strength=strength)
                    out = est.perturbed_prediction(predictor, image, seed=seed, index=i).foreground
                    record.perturbed(seed, key(family, strength), i, clean, out)
        if grid:
            _grid_passes(predictor, images, cleans, seeds, record)
    return record.rows, cleans


def _perturb(predictor, family: str, strength: float, image, seed: int, index: int) -> np.ndarray:
    est = CTEDropout(strength=strength) if family == "dropout" else CTEInput(strength=strength)
    return est.perturbed_prediction(predictor, image, seed=seed, index=index).foreground


def _grid_passes(predictor, images, cleans, seeds, record: _Record) -> None:
    """The other grid strengths on each seed's first CHOICE_IMAGES images (what the automatic choice sees)."""
    for seed in seeds:
        for i in image_order(len(images), seed)[:CHOICE_IMAGES]:
            for family, grid in STRENGTH_GRIDS.items():
                for strength in grid:
                    if strength != DEFAULTS[family]:
                        record.perturbed(seed, key(family, strength), i, cleans[i],
                                         _perturb(predictor, family, strength, images[i], seed, i))


def _finish_auto(target: dict, source_of: dict, paths, seeds, pools) -> None:
    """Per pool and seed, the automatic strength per family, and every image scored at it (one more model pass)."""
    from bioimage_cte.predict.factory import make_predictor
    from bioimage_cte.zoo.models import load_model

    need: dict[str, set] = {}
    for pool, names in pools.items():
        for seed in seeds:
            subset = image_order(len(paths), seed)[:CHOICE_IMAGES]
            for family, grid in STRENGTH_GRIDS.items():
                cons = {s: [np.nanmedian([_value(target, n, seed, key(family, s), "soft", i) for i in subset])
                            for n in names] for s in grid}
                keep = {s: [np.nanmedian([_value(target, n, seed, key(family, s), "keep", i) for i in subset])
                            for n in names] for s in grid}
                chosen = choose_strength(cons, keep)
                target.setdefault("auto", {}).setdefault(pool, {}).setdefault(str(seed), {})[family] = chosen
                if chosen != DEFAULTS[family]:
                    for n in names:
                        need.setdefault(source_of[n][0], set()).add((seed, family, chosen))
    for model, jobs in need.items():
        source = source_of[model][1]
        predictor = make_predictor(load_model(source.location), name=source.location, greybox=True, layer=None,
                                   devices=["cpu"], weight_format=None)
        factors = tuple(f for n, (m, _, f) in source_of.items() if m == model and f != 1.0)
        record = _Record(factors)
        with predictor:
            for i, path in enumerate(paths):
                image = load_target(path)
                clean = predictor.predict(image).foreground
                for seed, family, strength in sorted(jobs):
                    record.perturbed(seed, key(family, strength), i, clean,
                                     _perturb(predictor, family, strength, image, seed, i))
        for n, (m, _, f) in source_of.items():
            if m == model:
                _merge(target["models"][n]["seeds"], record.rows[f]["seeds"])


def _value(target, name, seed, k, what, i) -> float:
    cell = target["models"][name]["seeds"][str(seed)].get(k, {}).get(what, {})
    return cell.get(i, cell.get(str(i), np.nan))


def _merge(into: dict, new: dict) -> None:
    for seed, by_key in new.items():
        for k, by_what in by_key.items():
            for what, by_image in by_what.items():
                into.setdefault(seed, {}).setdefault(k, {}).setdefault(what, {}).update(by_image)


def candidates(sources: list) -> list:
    """The 17 trained 2D demo UNets every table was measured on: no format variant (the same network again) and
    none of the shape packages added later (3D, 2-channel, boundary-only, multi-class), so that runs compare."""
    from bioimage_cte.demozoo.formats import trained_only
    from bioimage_cte.zoo.sources import read_tags

    return [s for s in trained_only(sources) if "unet2d" in read_tags(s)]


def measure_target(sources, folder: Path, task: str, n_images: int, seeds: list[int], *, grid: bool,
                   families_only: bool = False, clean_only: bool = False, extra: tuple = ()) -> dict:
    """Every task model (and its calibration twins) on one target; consensus per candidate pool.

    ``extra``: more candidate sources (e.g. a published zoo model), kept when they have the task's tag; a name
    already among the candidates is not added again (a second copy would vote twice in the consensus).
    """
    zoo, seen = [], set()
    for source in filter_by_tag(candidates(sources) + list(extra), task):
        if source.name not in seen:
            zoo.append(source)
            seen.add(source.name)
    twins = dict(TWINS.get(task, ()))
    paths = list_images(folder / "images")[:n_images]
    labels = load_labels(paths, folder / "labels")
    models, masks, soft, source_of = {}, {}, {}, {}
    for source in zoo:
        factors = (twins[source.name],) if source.name in twins else ()
        try:
            rows, probs = measure_model(source, paths, labels, seeds, factors, grid=grid, families_only=families_only,
                                    clean_only=clean_only)
        except Exception as e:  # recorded, as rank would
            print(f"  {source.name} failed: {type(e).__name__}: {e}", flush=True)
            continue
        for f, row in rows.items():
            name = source.name if f == 1.0 else twin_name(source.name, f)
            p = probs if f == 1.0 else [scaled(q, f) for q in probs]
            models[name], masks[name], source_of[name] = row, [q > 0.5 for q in p], (source.name, source, f)
            if f == 1.0:
                soft[name] = p
    task_names = [s.name for s in zoo if s.name in models]
    pools = {"task": task_names,
             "task+calibration": task_names + [twin_name(n, f) for n, f in twins.items() if n in models]}
    consensus = {}
    for pool, names in pools.items():
        values = ConsensusAgreement().score_models([masks[n] for n in names])
        consensus[pool] = dict(zip(names, values, strict=True))
    target = {"task": task, "n_images": len(paths), "pools": pools, "models": models, "consensus": consensus}
    if SAVE_ARRAYS:  # what any mask- or image-based signal needs, computed offline
        names = list(soft)
        np.savez_compressed(SAVE_ARRAYS[0] / f"{folder.name}.npz", names=np.array(names),
                            probabilities=np.round(np.stack([soft[n] for n in names]) * 255).astype(np.uint8),
                            images=np.stack([load_target(p) for p in paths]).astype(np.float32),
                            labels=np.stack(labels).astype(np.uint16))
    if grid:
        _finish_auto(target, source_of, paths, seeds, pools)
    # per-image dicts (image -> value) become lists in image order, nan where not measured
    for row in models.values():
        for by_key in row["seeds"].values():
            for by_what in by_key.values():
                for what, by_image in by_what.items():
                    by_what[what] = [by_image.get(i, float("nan")) for i in range(len(paths))]
    return target


def targets_of(which: str, root: Path, n_images: int | None) -> dict[str, tuple[Path, str]]:
    from ranking_quality import FRESH_STYLES, NEW_HELD_OUT_STYLES, write_held_out_targets

    if which == "shipped":
        return {t: (f, target_task(f)) for t, f in find_targets(ROOT / "resources" / "data").items()}
    if which == "fresh-held-out":
        return write_held_out_targets(len(FRESH_STYLES), root, fresh=True, n_images=n_images)
    if which.startswith("recipe-held-out"):
        from ranking_quality import RECIPE_3_STYLES

        number = int(which[-1]) if which[-1].isdigit() else 1
        return write_held_out_targets(len(RECIPE_3_STYLES if number >= 3 else FRESH_STYLES), root, recipe=number,
                                      n_images=n_images)
    if which == "held-out":
        return write_held_out_targets(14, root, n_images=n_images)
    return write_held_out_targets(len(NEW_HELD_OUT_STYLES), root, new=True, n_images=n_images)


def _is_3d(folder: Path) -> bool:
    import yaml

    spec = folder / "target.yaml"
    return spec.is_file() and "z" in str((yaml.safe_load(spec.read_text()) or {}).get("axes", ""))


def merge(parts: list[Path], output: Path) -> None:
    """One values file from the files of processes that measured parts of the targets (``--targets``)."""
    reports = [json.loads(p.read_text()) for p in parts]
    merged = {**reports[0], "targets": {}, "seconds": sum(r["seconds"] for r in reports)}
    for r in reports:
        merged["targets"].update(r["targets"])
    output.write_text(json.dumps(merged))
    print(f"wrote {output}: {len(merged['targets'])} targets")


def main() -> None:
    if sys.argv[1:2] == ["--merge"]:  # quality_values.py --merge OUT PART [PART ...]
        merge([Path(p) for p in sys.argv[3:]], Path(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=("shipped", "held-out", "new-held-out", "fresh-held-out",
                                                           "recipe-held-out", "recipe-held-out-2", "recipe-held-out-3",
                                                           "recipe-held-out-4", "recipe-held-out-5",
                                                           "recipe-held-out-6"),
                        required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--images", type=int, default=None,
                        help="images per target (default: 8 shipped, 6 held-out, 8 new held-out; more renders "
                             "longer versions of the held-out targets, e.g. 48 for the budget benchmark)")
    parser.add_argument("--targets", type=int, nargs=2, default=None, metavar=("FIRST", "STOP"),
                        help="only targets FIRST..STOP-1 (smoke runs; or two processes sharing the cores)")
    parser.add_argument("--grid", action="store_true", help="also the automatic strength's grid and choice")
    parser.add_argument("--families-only", action="store_true",
                        help="only the CTE families (no tta): the budget benchmark's 48-image runs")
    parser.add_argument("--clean-only", action="store_true",
                        help="only what the clean and tta passes give (no CTE family): tta's 48-image budget runs")
    parser.add_argument("--extra-model", type=Path, nargs="+", default=[],
                        help="more candidate packages (e.g. unet2d_nuclei_broad), in every pool of their task")
    parser.add_argument("--skip-families", nargs="+", default=[], choices=list(DEFAULTS),
                        help="leave these seeded families out (nan): quicker runs that compare tta, dihedral, "
                             "consensus and the clean-only signals")
    parser.add_argument("--save-arrays", type=Path, default=None,
                        help="also write, per target, every model's clean probabilities, the images and the labels "
                             "(DIR/<target>.npz) for signals computed offline")
    parser.add_argument("--task", default=None, help="only the targets of this task (e.g. nuclei)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    SKIP_FAMILIES.update(args.skip_families)
    if args.save_arrays:
        args.save_arrays.mkdir(parents=True, exist_ok=True)
        SAVE_ARRAYS.append(args.save_arrays)
    suffix = "" if args.images is None else f"_{args.images}"
    output = args.output or ROOT / "benchmarks" / "results" / f"quality_values_{args.set}{suffix}.json"
    start = time.perf_counter()
    report: dict = {"set": args.set, "seeds": args.seeds, "grids": {k: list(v) for k, v in STRENGTH_GRIDS.items()},
                    "grid": args.grid, "targets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        sources = find_models([ROOT / "resources" / "zoo"])
        targets = targets_of(args.set, Path(tmp) / "targets", args.images)
        n_images = args.images or 8
        chosen = list(targets.items())
        if args.task:  # 2D targets of that task (a z-stack would be predicted slice by slice, for minutes)
            chosen = [(t, ft) for t, ft in chosen if ft[1] == args.task and not _is_3d(ft[0])]
        if args.targets:
            chosen = chosen[args.targets[0]:args.targets[1]]
        extra = tuple(find_models(args.extra_model)) if args.extra_model else ()
        for t, (folder, task) in chosen:
            report["targets"][t] = measure_target(sources, folder, task, n_images, args.seeds, grid=args.grid,
                                                  families_only=args.families_only, clean_only=args.clean_only,
                                                  extra=extra)
            print(f"{t}: {len(report['targets'][t]['models'])} models, {time.perf_counter() - start:.0f} s",
                  flush=True)
    report["seconds"] = time.perf_counter() - start
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report))
    print(f"wrote {output} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
