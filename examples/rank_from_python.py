"""Rank models from Python and read the ranking into a table.

    python examples/rank_from_python.py                          # the demo zoo's nuclei models on DSB2018
    python examples/rank_from_python.py ZOO IMAGES --tag cells --csv ranking.csv

``bioimage_cte.rank`` takes what the command line takes (packages, folders of packages, zips, a collection index,
URLs; a folder, glob or list of images) and one ``RankOptions``; it returns the ranking with what it was made from.
``ranking_table`` turns its JSON (the same JSON ``bioimage-cte rank --output`` writes) into a pandas DataFrame: one
row per model, ranked ones first, then those that did not fit, were skipped or failed, each with its reason.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

import bioimage_cte

ROOT = Path(__file__).resolve().parents[1]

COLUMNS = ["rank", "model", "score", "low", "high", "near_top", "foreground", "status", "note", "source"]


def ranking_table(payload: dict[str, Any]) -> pd.DataFrame:
    """One row per model of a ranking JSON: rank, score and its interval, ~top, foreground share, status and note.

    ``status`` is ``ranked`` for a model with a score, ``no score`` for one ranked without (e.g. it predicted no
    foreground), and the failure's stage (``unfit``, ``skipped``, ``predict``, ``estimator``) for the others.
    """
    rows = []
    for m in payload["models"]:
        low, high = m.get("interval") or (None, None)
        rows.append({"rank": m["rank"], "model": m["name"], "score": m["score"], "low": low, "high": high,
                     "near_top": bool(m.get("tied_with_top")), "foreground": m.get("foreground_fraction"),
                     "status": "ranked" if m["score"] is not None else "no score", "note": m.get("note") or "",
                     "source": m["source"]})
    for f in payload["failures"]:
        rows.append({"rank": None, "model": f["name"], "score": None, "low": None, "high": None, "near_top": False,
                     "foreground": None, "status": f["stage"], "note": f["reason"], "source": f["source"]})
    return pd.DataFrame(rows, columns=COLUMNS)


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """Rank, print the table and optionally write it as CSV; returns the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zoo", nargs="?", default=str(ROOT / "resources" / "zoo"))
    parser.add_argument("images", nargs="?", default=str(ROOT / "resources" / "data" / "dsb2018" / "images"))
    parser.add_argument("--tag", default="nuclei", help="keep the models with this tag (default: nuclei)")
    parser.add_argument("--estimator", default=None,
                        help="default: the library's for the tag (tta+consensus+boundary for nuclei)")
    parser.add_argument("--csv", type=Path, help="also write the table here")
    args = parser.parse_args(argv)

    options = bioimage_cte.RankOptions(tag=args.tag, **({"estimator": args.estimator} if args.estimator else {}))
    run = bioimage_cte.rank([args.zoo], args.images, options)
    table = ranking_table(run.to_json_dict())
    with pd.option_context("display.width", 120, "display.max_colwidth", 40):
        print(table.drop(columns=["source"]).to_string(index=False))
    if args.csv is not None:
        table.to_csv(args.csv, index=False)
        print(f"table written to {args.csv}")
    return table


if __name__ == "__main__":
    main()
