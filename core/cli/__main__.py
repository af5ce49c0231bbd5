"""`python -m depmicro.core.cli ...` runs the `depmicro` command."""
import sys

from depmicro.core.cli import main

sys.exit(main())
