"""The ``bioimage-cte`` command line: it parses, calls one library entry point and prints.

``commands`` holds the commands, ``options`` the declared options, ``output`` the tables and messages, and
``progress`` the progress display.
"""

from bioimage_cte.cli import calibrate as _calibrate  # noqa: F401  (registers the command on app)
from bioimage_cte.cli import finetune as _finetune  # noqa: F401  (registers the command on app)
from bioimage_cte.cli.commands import app, main

__all__ = ["app", "main"]
