"""Rank a folder of model packages and write each model's score back onto its own rdf.yaml.

    python examples/annotate_folder.py PACKAGES IMAGES --target my-lab-nuclei            # in place, with backups
    python examples/annotate_folder.py PACKAGES IMAGES --target my-lab-nuclei --output annotated/

Each package gets one entry per target under ``config.bioimage_cte.transferability`` (target name and content
fingerprint, estimator and settings, score, rank among how many models, image count, date, version); ranking the
same target again replaces only that entry. In place, the previous file is kept as a numbered ``.bak`` in
``bioimage-cte-backups/`` beside the packages; the rdf.yaml keeps its comments and layout, and a zip is re-packed with
every other file byte-identical. This is ``bioimage-cte rank ... -o ranking.json`` followed by ``bioimage-cte
annotate ranking.json ...``, from Python.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import bioimage_cte


def annotate_folder(packages: Path, images: str, *, target: str, output: Path | None = None,
                    tag: str | None = None) -> dict[Path, list[dict]]:
    """Rank the packages on the images, write the ranking onto them; returns each package's entries after."""
    from bioimage_cte.outputs.annotate import annotate_from_ranking, read_transferability

    run = bioimage_cte.rank([packages], images, bioimage_cte.RankOptions(tag=tag))
    ranking = Path(output or packages) / f"ranking-{target}.json"
    ranking.parent.mkdir(parents=True, exist_ok=True)
    ranking.write_text(json.dumps(run.to_json_dict(), indent=2, allow_nan=False) + "\n")
    written = annotate_from_ranking(ranking, target=target, images=list(run.images), output=output)
    return {path: read_transferability(path) for path in written}


def main(argv: Sequence[str] | None = None) -> dict[Path, list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", type=Path, help="a folder of model packages (zips or folders)")
    parser.add_argument("images", help="the target images: a folder, a glob or a file")
    parser.add_argument("--target", required=True, help="the target's name on the model cards, e.g. dsb2018")
    parser.add_argument("--output", type=Path, help="write annotated copies here instead of editing in place")
    parser.add_argument("--tag", help="only the models with this tag")
    args = parser.parse_args(argv)
    entries = annotate_folder(args.packages, args.images, target=args.target, output=args.output, tag=args.tag)
    for path, found in entries.items():
        mine = next(e for e in found if e["target"] == args.target)
        print(f"{path}: rank {mine['rank']} of {mine['n_models']} on {args.target}, score {mine['score']:.3f}")
    return entries


if __name__ == "__main__":
    main()
