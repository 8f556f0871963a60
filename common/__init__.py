"""Shared building blocks of the training and inference scripts (the scripts import this, never the reverse)."""
