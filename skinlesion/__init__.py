"""skinlesion: an explainable image classifier (skin lesions, steel defects; timm EfficientNet-B0, Grad-CAM)."""


def __getattr__(name: str):
    # Lazy, so that training (which never explains) does not import captum and matplotlib.
    if name == "Predictor":
        from .inference import Predictor
        return Predictor
    raise AttributeError(f"module 'skinlesion' has no attribute {name!r}")


__all__ = ["Predictor"]
