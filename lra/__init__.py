"""lra: compare attention mechanisms on the Long Range Arena with Hydra, MLflow and Optuna."""

__version__ = "0.1.0"
