"""Stage 3, the method: Consistency-based Transferability Estimation and its baselines.

Perturbations, seeded draws, consistency scores and their aggregation, the estimators and their registry
(``registry``: estimator names, ``make_estimator``), the combined estimator, the per-model outcome types, and
the metrics against labels. Imports the stages before it (base, zoo, predict).
"""
