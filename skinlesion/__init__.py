"""skinlesion: an explainable image classifier (skin lesions, steel defects; timm EfficientNet-B0, Grad-CAM).

`from skinlesion import Predictor` is the Python API (docs/api.md); docs/architecture.md maps the package.
"""
from .predictor import Predictor

__all__ = ["Predictor"]
