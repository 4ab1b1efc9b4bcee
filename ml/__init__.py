"""Pure PyTorch / NumPy core of mvmatch: no Django imports anywhere under ``ml/``."""
