"""skinlesion: an explainable skin-lesion (and steel-defect) image classifier."""
