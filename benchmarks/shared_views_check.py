"""Do the views that share an image's preprocessing give the rankings of views predicted one by one? (not a test)

    python benchmarks/shared_views_check.py [--zoo resources/zoo] [--data resources/data] [--estimator tta]

Ranks every package of the zoo on every target of ``--data`` twice with :func:`bioimage_cte.run.pipeline.rank`:
with the flipped/rotated views sharing the image's padding and preprocessing (the default), and with every view
predicted through the model's bioimageio.core pipeline as an image of its own
(``bioimage_cte.predict.views.SHARED_VIEWS = False``). Prints, per target, how many per-image values there are and
every one that differs (by the bit); exits 1 if any does. The slow test ``tests/test_views.py`` checks the demo
ranking (nuclei models on DSB2018); this checks the whole demo zoo (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parents[1]


def per_image(zoo: Path, images: Path, *, estimator: str, shared: bool) -> dict[str, list]:
    from bioimage_cte.predict import views
    from bioimage_cte.run.options import RankOptions
    from bioimage_cte.run.pipeline import rank

    views.SHARED_VIEWS = shared
    try:
        run = rank([zoo], images, RankOptions(estimator=estimator))
    finally:
        views.SHARED_VIEWS = True
    return {m["name"]: m["per_image"] for m in run.to_json_dict()["models"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", type=Path, default=ROOT / "resources" / "zoo")
    parser.add_argument("--data", type=Path, default=ROOT / "resources" / "data")
    parser.add_argument("--estimator", default="tta")
    args = parser.parse_args()
    differing = total = 0
    for target in sorted(p for p in args.data.iterdir() if (p / "images").is_dir()):
        shared, general = (per_image(args.zoo, target / "images", estimator=args.estimator, shared=s)
                           for s in (True, False))
        values = sum(len(v) for v in shared.values())
        diff = [(name, i, a, b) for name, row in shared.items()
                for i, (a, b) in enumerate(zip(row, general.get(name, []), strict=False)) if a != b]
        diff += [(name, -1, None, None) for name in set(shared) ^ set(general)]
        print(f"{target.name}: {len(shared)} models, {values} per-image values, {len(diff)} differ", flush=True)
        for name, i, a, b in diff:
            print(f"  {name} image {i}: shared {a!r}, one by one {b!r}")
        differing, total = differing + len(diff), total + values
    print(f"all targets: {total} per-image values, {differing} differ")
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
