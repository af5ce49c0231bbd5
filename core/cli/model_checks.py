"""What `depmicro train` and `depmicro impute` refuse before torch loads (their COMMANDS `check`s).

The handlers (cli/model.py) import torch at module level, which costs seconds; a bad config, an
--out that would replace what the command did not write, or a damaged bundle is refused without
paying for it. The handlers call the same functions again (cheap) and use what they return, so a
handler called without its check is no less careful.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from depmicro.core.errors import DepmicroError
from depmicro.core.io.manifest import read_bundle
from depmicro.core.io.outputs import MODEL_KIND, check_output
from depmicro.core.model.config import ModelConfig, load_config

OUTPUT_SUFFIXES = (".h5ad", ".csv", ".tsv")


def check_train(args: argparse.Namespace) -> tuple[ModelConfig, Path]:
    """The config with the command line's overrides, and the model directory to write."""
    overrides = list(args.set or [])
    for name in ("seed", "protocol", "max_memory"):
        if getattr(args, name) is not None:
            overrides.append(f"{name}={getattr(args, name)}")
    cfg = load_config(args.config, overrides)
    out = check_output(args.out, directory=MODEL_KIND, inputs=(args.config, args.data, args.metadata, *(args.pretrain or [])))
    return cfg, out


# a per-entry std settles long before this; beyond it a typo (an extra zero or three) would run for hours
MAX_UNCERTAINTY_DRAWS = 1000


def check_impute(args: argparse.Namespace) -> Path:
    """The output file to write, once the bundle matches its manifest (load_model reads and verifies it again:
    a bundle is a few megabytes, and a second read keeps the handler safe on its own)."""
    model_dir = Path(args.model)
    read_bundle(model_dir)
    if Path(args.out).suffix.lower() not in OUTPUT_SUFFIXES:
        raise DepmicroError(f"{args.out}: output must end in .h5ad, .csv or .tsv")
    out = check_output(args.out, inputs=(model_dir, args.data, args.metadata))
    if args.uncertainty is not None and not 2 <= args.uncertainty <= MAX_UNCERTAINTY_DRAWS:
        raise DepmicroError(f"--uncertainty takes 2 to {MAX_UNCERTAINTY_DRAWS:,} draws, not {args.uncertainty} "
                            "(each draw is a full diffusion pass over the table)")
    return out
