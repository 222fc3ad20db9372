"""Training stage: DisCNN / POD patch classifiers (needs the ``[train]`` extra).

Kept import-light: importing ``training`` does not import torch; its modules do.
"""
