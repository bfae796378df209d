"""The verdict on a measurement and the typed result of a timing test."""
