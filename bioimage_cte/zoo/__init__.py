"""Stage 1, the zoo: finding and opening untrusted model packages before anything of theirs runs.

Model sources (paths, zips, folders, collection indexes, URLs), zip and YAML checks, the model description
(bioimageio.spec), which package code may run (``trust``), which weights each model runs with (``weights``),
which output is scored (``readout``), tags, and reading or rewriting a package's ``rdf.yaml``. Imports only
:mod:`bioimage_cte.base`.
"""
