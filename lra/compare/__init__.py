"""Comparing finished runs: the report, the Pareto front, published figures, the MLflow UI, re-evaluation."""
