"""Fine-tune one model on the user's labelled images and write it as a new package (``bioimage-cte finetune``).

What a ranking advises when even the best model's predicted Dice is low. The loop and the export are the
fine-tuning study's (:mod:`bioimage_cte.studies.finetune`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bioimage_cte.base.errors import BioimageCteError
from bioimage_cte.studies.finetune import FinetuneConfig, check_exportable, export_finetuned, finetune, kshot_split
from bioimage_cte.studies.networks import load_packaged_network

if TYPE_CHECKING:
    from bioimage_cte.run.options import RankOptions

__all__ = ["finetune_package"]


def finetune_package(
    model: str | Path,
    images: str | Path,
    labels: str | Path,
    output: Path,
    options: RankOptions,
    *,
    config: FinetuneConfig | None = None,
    n_test: int = 1,
) -> dict[str, Any]:
    """Fine-tune one model on the user's labelled images and write it as a new bioimageio package.

    ``n_test`` images (seeded choice) are held out to measure the Dice before and after; the model is trained on
    every other image. An existing ``output`` is kept as a numbered backup (``<name>.bak``) before it is replaced;
    a folder, socket or block device is never replaced.

    Returns
    -------
    dict
        :meth:`FinetuneRun.to_json_dict` (test Dice before and after, its curve) with the written ``package`` and the
        ``test_images`` and ``train_images`` by file name.

    Raises
    ------
    BioimageCteError
        ``model`` names no package or several, cannot be fine-tuned (no ``pytorch_state_dict`` weights, code the
        policy does not allow, not the demo zoo's UNet2d for the export), or the images cannot be split.
    """
    import tempfile

    from bioimage_cte.base.fileutils import write_atomic
    from bioimage_cte.predict.images import list_images, load_labels, load_target
    from bioimage_cte.zoo.sources import select_models

    config = config or FinetuneConfig()
    sources = select_models([model])
    if len(sources) != 1:
        raise BioimageCteError(f"{model} names {len(sources)} packages; fine-tune one package (a .zip, folder or "
                               "rdf.yaml) at a time")
    paths = list_images(images)
    label_arrays = load_labels(paths, labels, axes=options.axes)
    arrays = [load_target(p, axes=options.axes) for p in paths]
    split = kshot_split(len(arrays), ks=["all"], n_test=n_test, seed=config.seed)
    network = load_packaged_network(sources[0].location, name=sources[0].name, code_policy=options.code_policy())
    check_exportable(network)  # before minutes of training, not after
    run, net = finetune(network, arrays, label_arrays, split.train["all"], split.test, config=config, k="all")
    with tempfile.TemporaryDirectory() as tmp:
        built = export_finetuned(network, net, arrays[split.test[0]], Path(tmp) / "package.zip", run=run)
        written = write_atomic(Path(output).expanduser(), built.read_bytes(), backup=True)
    return {**run.to_json_dict(), "package": str(written),
            "test_images": [paths[i].name for i in split.test],
            "train_images": [paths[i].name for i in split.train["all"]]}
