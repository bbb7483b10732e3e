"""Processes and devices: where this process stands (torchrun / srun), DDP, device slots, stop signals."""
