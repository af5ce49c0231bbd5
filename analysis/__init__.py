"""depmicro.analysis."""
