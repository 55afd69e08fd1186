"""The boundary measures of :mod:`bioimage_cte.cte.boundary` (edge, peak) added to a values file, per model and image,
from the arrays ``quality_values.py --save-arrays`` wrote (issue #25, third and fourth iterations of the protocol).

    python benchmarks/quality_values.py ... --save-arrays DIR --output VALUES.json
    python benchmarks/boundary.py VALUES.json DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from bioimage_cte.cte.boundary import boundary_measures, image_gradient


def add_to_values(values: dict, arrays: dict[str, dict]) -> None:
    """Per model and image, ``edge`` and ``peak`` into a values file's targets, from the arrays ``quality_values
    --save-arrays`` wrote (``arrays[target]``: names, probabilities as uint8, images)."""
    for target, t in values["targets"].items():
        a = arrays[target]
        grads = [image_gradient(image) for image in a["images"]]
        for m, name in enumerate(a["names"]):
            pairs = [boundary_measures(p > 127, g) for g, p in zip(grads, a["probabilities"][m], strict=True)]
            for row in _rows(t, str(name)):
                row["edge"], row["peak"] = [e for e, _ in pairs], [p for _, p in pairs]


def _rows(target: dict, name: str) -> list[dict]:
    """The model's row and its calibration twins' (the same mask)."""
    return [row for n, row in target["models"].items()
            if n == name or n.startswith((f"{name}-sharpx", f"{name}-softx"))]


def main() -> None:
    """``python benchmarks/boundary.py VALUES.json ARRAYS_DIR``: add edge and peak to a values file in place."""
    values_file, folder = Path(sys.argv[1]), Path(sys.argv[2])
    values = json.loads(values_file.read_text())
    arrays = {t: dict(np.load(folder / f"{t}.npz")) for t in values["targets"]}
    add_to_values(values, arrays)
    values_file.write_text(json.dumps(values))
    print(f"{values_file}: edge and peak for {len(arrays)} targets")


if __name__ == "__main__":
    main()
