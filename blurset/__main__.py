"""``python -m blurset``: the command line."""

from blurset.pipeline.cli.main import main

if __name__ == "__main__":
    main()
