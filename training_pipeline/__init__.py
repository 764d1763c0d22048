"""Training pipeline (the T of FTI): feature view -> MDT -> PyTorch model -> validate -> register.

Run it with ``python -m training_pipeline train`` (or ``torchrun ... -m training_pipeline train``).
"""
