"""The handlers of the analysis commands, one module per command (the table and arguments: analysis/cli.py),
so `depmicro analyze` never loads torch, which only `export` needs."""
