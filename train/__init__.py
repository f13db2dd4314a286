"""Command-line programs: python -m train, python -m train.evaluate."""
