"""What to run: scenario files, model shapes, the run's settings."""
