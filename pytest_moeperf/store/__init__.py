"""What a run keeps: baseline files and tuned configs, written safely."""
