"""patchdet: train tiny patch detectors, export them, run them on camera streams.

This package only holds the command line; the stages are the top-level
packages ``training`` -> ``export`` -> ``runtime``.
"""

__version__ = "0.1.0"
