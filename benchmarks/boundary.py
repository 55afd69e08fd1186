"""Where a mask's boundary lies in the image: two label-free measures (issue #25, third iteration of the protocol).

Both look at the gradient magnitude ``g`` of the image smoothed by a Gaussian of sigma 1 pixel:

- ``edge``: the mean of ``g`` on the mask's boundary pixels, over the image's 99th percentile of ``g``;
- ``peak``: ``-|g_in - g_out| / (g_in + g_out)``, with ``g_in`` the mean of ``g`` on the one-pixel ring just inside
  the boundary and ``g_out`` on the ring just outside; 0 when the boundary sits on the gradient's ridge, negative
  when the mask is too loose or too tight.

    python benchmarks/quality_values.py ... --save-arrays DIR --output VALUES.json
    python benchmarks/boundary.py VALUES.json DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi


def gradient(image: np.ndarray) -> np.ndarray:
    return ndi.gaussian_gradient_magnitude(np.asarray(image, np.float64), 1.0)


def boundary_signals(g: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """``(edge, peak)`` of a boolean ``mask`` on an image whose :func:`gradient` is ``g``; an empty or full mask has
    no boundary: edge 0, peak nan."""
    boundary = mask ^ ndi.binary_erosion(mask)
    edge = float(g[boundary].mean() / (np.percentile(g, 99) + 1e-12)) if boundary.any() else 0.0
    inner = ndi.binary_erosion(mask, iterations=1) & ~ndi.binary_erosion(mask, iterations=2)
    outer = ndi.binary_dilation(mask, iterations=2) & ~ndi.binary_dilation(mask, iterations=1)
    if not (inner.any() and outer.any()):
        return edge, float("nan")
    g_in, g_out = g[inner].mean(), g[outer].mean()
    return edge, float(-abs(g_in - g_out) / (g_in + g_out + 1e-12))


def add_to_values(values: dict, arrays: dict[str, dict]) -> None:
    """Per model and image, ``edge`` and ``peak`` into a values file's targets, from the arrays ``quality_values
    --save-arrays`` wrote (``arrays[target]``: names, probabilities as uint8, images)."""
    for target, t in values["targets"].items():
        a = arrays[target]
        grads = [gradient(image) for image in a["images"]]
        for m, name in enumerate(a["names"]):
            pairs = [boundary_signals(g, p > 127) for g, p in zip(grads, a["probabilities"][m], strict=True)]
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
