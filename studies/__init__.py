"""depmicro.studies."""
