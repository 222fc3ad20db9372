"""Runtime stage: torch-free real-time patch detection on images and camera streams.

Nothing in this package may import torch: it runs on a Jetson or a plain CPU
box with only numpy, OpenCV and ONNX Runtime installed.
"""
