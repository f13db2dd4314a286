"""Model folders: what a folder holds and says (spec.py), the timm networks in it (network.py),
the answering network of several models and views (ensemble.py), the Hub (hub.py), atomic
writes (folder.py) and the model card rendered from metrics.json (card.py)."""
