"""The record of runs: every MLflow call (tracking a run, the stores it writes to, its model artifacts)."""
