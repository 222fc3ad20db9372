"""Which head a model trained with each loss has (see ``runtime.card``); torch-free, so ``patchdet train --help``
can list the losses without importing torch. ``training.losses`` maps the same names to their modules."""

from __future__ import annotations

LOSS_HEADS: dict[str, str] = {
    # DisCNN detection: the output modulus is the score.
    "n2o": "modulus",
    "n2o-softmax": "modulus",
    # POD family: frozen PEDCC centroids, cosine prediction.
    "cosine": "cosine",
    "nac": "cosine",
    "sc": "cosine",
    "pod": "cosine",
    # Angular-margin baselines: cosine head whose centroids the loss learns.
    "cosface": "cosine",
    "arcface": "cosine",
    # Class logits: exported with a softmax head.
    "softmax": "softmax",
    "center": "softmax",
    "msl": "softmax",
    "gini-kl": "softmax",
}

# Cosine-head losses that learn their own class vectors instead of using the frozen PEDCC centroids.
LEARNED_CENTROIDS = frozenset({"cosface", "arcface"})
