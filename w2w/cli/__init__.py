"""The ``w2w`` command line (:mod:`.app`), its options derived from the stage configs
(:mod:`.options`)."""

from w2w.cli.app import app, main

__all__ = ["app", "main"]
