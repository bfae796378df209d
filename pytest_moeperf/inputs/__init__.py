"""The inputs of one test: routing, hidden states and scales, the expert weights."""
