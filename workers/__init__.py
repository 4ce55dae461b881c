"""Background processes that run beside the nodes (each one `python -m workers.<name>`)."""
