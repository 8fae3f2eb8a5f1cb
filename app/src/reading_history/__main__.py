"""Allow `python -m reading_history`, the same as the `reading-history` command."""

import sys

from reading_history.cli import main

sys.exit(main())
