"""depmicro.cluster."""
