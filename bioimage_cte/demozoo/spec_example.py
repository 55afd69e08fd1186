"""The demo zoo's one model trained by others: the specification's ``unet2d_nuclei_broad``, as a package zip.

``resources/zoo/unet2d-nuclei-broad.zip`` is built from ``resources/spec-examples/unet2d_nuclei_broad`` (the
bioimage.io specification's example model, a 2D UNet trained on the DSB2018 nuclei by its authors; MIT) by
:func:`build_spec_example` (``python examples/build_demo_zoo.py --only spec-example``), so that the demo ranks a
real, published model among the project's own. Nothing of the network changes; the package differs from the
example only where a self-contained, offline package must:

- its ``pytorch_state_dict`` weights are a URL (``files.ilastik.org``), not a file of the example: the package
  keeps the example's ``torchscript`` weights (now the parent entry) and ``onnx`` weights;
- the maintainers' ``github_user`` names are dropped (format 0.5 requires them on maintainers, and bioimageio.spec
  looks each one up on GitHub, which needs the network), so ``maintainers`` is left out; the names are recorded
  under ``config.bioimage_cte.provenance``;
- ``git_repo`` (a link to the example's folder, which validation requests) is left out;
- the tag ``nuclei`` is added (the demo's nuclei models share it), and the provenance (repository, commit, path,
  sha256 of the example's RDF, what was changed) is recorded under ``config.bioimage_cte.provenance``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

__all__ = ["SPEC_EXAMPLE_NAME", "build_spec_example", "packaged_rdf"]

SPEC_EXAMPLE_NAME = "unet2d-nuclei-broad"
_CHANGES = [
    "pytorch_state_dict weights left out: the example names them by URL (files.ilastik.org), not a file of the "
    "example; the torchscript weights are the parent entry now, the onnx weights name it as their parent",
    "maintainers left out with their github_user names (constantinpape, fynnbe): format 0.5 requires a "
    "github_user on a maintainer, and validating one looks it up on GitHub (needs the network)",
    "git_repo left out (a link to the example's folder, which validation would request): it is the path above",
    "tag 'nuclei' added",
]


def packaged_rdf(example_rdf: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    """The example's RDF as the demo package carries it (see the module docstring for every change)."""
    rdf = copy.deepcopy(example_rdf)
    maintainers = [m.get("name") for m in rdf.pop("maintainers", [])]
    weights = rdf["weights"]
    weights.pop("pytorch_state_dict")
    weights["torchscript"].pop("parent", None)
    weights["onnx"]["parent"] = "torchscript"
    rdf.pop("git_repo", None)
    rdf["tags"] = [*rdf["tags"], "nuclei"]
    config = rdf.setdefault("config", {})
    config["bioimage_cte"] = {"provenance": {**provenance, "maintainers": maintainers, "changes": _CHANGES},
                              "trained_by_others": True}
    return rdf


def build_spec_example(examples: Path, dest: Path) -> Path:
    """Write ``dest`` (a bioimageio package zip) from the spec example under ``examples``; returns ``dest``.

    ``examples`` is ``resources/spec-examples`` (with its ``provenance.json``). The package is validated by
    bioimageio.spec from the example's own files (every sha256 checked) and saved by it.
    """
    from bioimageio.spec import ValidationContext, build_description, save_bioimageio_package

    from bioimage_cte.zoo.safe_yaml import load_untrusted_yaml

    folder = examples / "unet2d_nuclei_broad"
    raw = (folder / "bioimageio.yaml").read_bytes()
    listed = json.loads((examples / "provenance.json").read_text())
    provenance = {"repository": listed["repository"], "commit": listed["commit"],
                  "path": "example_descriptions/models/unet2d_nuclei_broad/bioimageio.yaml",
                  "sha256": hashlib.sha256(raw).hexdigest(), "licence": "MIT"}
    rdf = packaged_rdf(load_untrusted_yaml(raw, where=str(folder / "bioimageio.yaml")), provenance)
    with ValidationContext(root=folder, file_name="rdf.yaml", perform_io_checks=True):
        descr = build_description(rdf, format_version="latest")
        if descr.validation_summary.status != "valid-format":
            raise ValueError(f"{folder}: the packaged RDF is not valid: {descr.validation_summary.format()}")
        save_bioimageio_package(descr, output_path=dest)
    return dest
