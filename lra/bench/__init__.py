"""`python -m lra.bench`: speed and memory of every attention mechanism and of the training step, measured
interleaved in one process, and the automatic chunk-size budget (`lra.bench.budget.auto_chunk_size`).

Modules: `measure` (interleaved timing, allocator-level peak memory), `attention` (the per-mechanism fwd+bwd
benchmark over sequence lengths), `step` (the whole training step per chunk size, and the data loader),
`budget` (the largest chunk that fits a memory budget), `output` (tables, JSON, MLflow).
"""

from lra.bench.budget import BudgetResult, auto_chunk_size, full_length_batch, probe_chunk_size

__all__ = ["BudgetResult", "auto_chunk_size", "full_length_batch", "probe_chunk_size"]
