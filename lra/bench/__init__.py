"""`python -m lra.bench`: speed and memory of every attention mechanism and of the training step, measured
interleaved in one process, and the chunk size `gpu_memory.<attention>: auto` picks (`lra.run.chunking`).

Modules: `measure` (interleaved timing; peak memory comes from `lra.run.memory`), `attention` (the per-mechanism
fwd+bwd benchmark over sequence lengths), `step` (the whole training step per chunk size, and the data loader),
`flops` (analytic FLOP counts per mechanism), `history` (saved results and the comparison with them), `gpu`
(the GPU tests and both benchmarks on a GPU, one table), `output` (tables, JSON, MLflow).
"""
