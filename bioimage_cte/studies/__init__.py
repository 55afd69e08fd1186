"""Side studies around the method, built on the library but not needed to rank models.

Modules
-------
transfer
    The transfer matrix: true performance of every model on every labelled target.
finetune, finetune_report
    The k-shot fine-tuning benchmark (does the zero-shot ranking predict the fine-tuned one?) and its HTML page.
networks
    A package's torch network outside bioimageio.core (load, prepare inputs, predict), for fine-tuning and CKA.
cka
    Linear CKA between models' features (zoo similarity, feature reuse after fine-tuning).
"""
