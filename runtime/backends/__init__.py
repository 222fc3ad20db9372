"""Inference backends behind one tiny interface (lazy: optional engines import on first use).

A backend is a callable: ``backend(batch: float32 [N, C, H, W]) -> dict[str, np.ndarray]``
mapping graph output names (see ``runtime.card``) to arrays. Pre- and
post-processing stay outside backends, so every backend is checked against
one reference on the same inputs.

``load_backend(path, name="auto", threads=None, **options)`` picks the backend
from the artifact's extension or ``name`` (``onnxruntime``, ``openvino``,
``opencv``, ``tensorrt``); ``list_backends()`` names them and says which are
installed.
"""
