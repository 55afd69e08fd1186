"""Stage 5, outputs: what a ranking becomes for people and for the zoo.

Model-card entries written back onto packages (``annotate``), HTML and zoo reports (``reports``) and where the
output files go (``destinations``). Imports the stages before it.
"""
