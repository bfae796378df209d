"""pytest-moeperf: correctness and CUDA-graph timing gates for MoE token-routing kernels."""
__version__ = "0.1.0"
