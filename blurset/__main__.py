"""``python -m blurset``: the command line."""

from blurset.pipeline.cli.main import main

main()
