"""Implementations under test and their contracts: the PyTorch references and the comparisons."""
