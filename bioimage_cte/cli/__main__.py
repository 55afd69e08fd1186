"""``python -m bioimage_cte.cli``: the ``bioimage-cte`` command line."""

import sys

from bioimage_cte.cli.commands import main

sys.exit(main())
