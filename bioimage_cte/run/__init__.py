"""Stage 4, run: the options of a ranking and the runs that produce one.

``options.RankOptions`` (plain data), the entry points ``pipeline.rank`` / ``pipeline.evaluate``, scoring models
over images, the adaptive budget and automatic strength, the ranking and its JSON, evaluation against labels, and
the zoo-wide jobs over the results store. Imports the stages before it.
"""
