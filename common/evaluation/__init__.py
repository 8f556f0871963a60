"""Official-equivalent evaluation protocols; each module is also a CLI (python -m common.evaluation.<name>)."""
