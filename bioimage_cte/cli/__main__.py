"""``python -m bioimage_cte.cli``: the ``bioimage-cte`` command line."""

import sys

from bioimage_cte.cli.commands import main

if __name__ == "__main__":  # a child process that imports the parent's main module must not run the command
    sys.exit(main())
