"""``python -m w2w.cli``: the same as the ``w2w`` command."""

from w2w.cli import main

main()
