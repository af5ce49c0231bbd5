"""depmicro.core."""
