"""Measuring on the GPU: CUDA-graph timing, the copy ceiling, the environment and the GPU's health."""
