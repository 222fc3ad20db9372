"""A prelude for child-process scripts: torch, torchvision and onnx cannot be imported after it."""

import textwrap

BLOCK_TORCH = textwrap.dedent(
    r"""
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "onnx"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    """
)
