"""More registered backbones beside DisCNN (small CNN, MobileNetV2, ResNet-18 for small inputs)."""
