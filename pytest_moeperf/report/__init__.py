"""What a run shows: terminal and markdown tables, JSON, plots."""
