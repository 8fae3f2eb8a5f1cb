"""Let the unit tests import the service from its source tree."""

import sys
from pathlib import Path

APP_SOURCE = Path(__file__).resolve().parents[3] / "app" / "src"
if str(APP_SOURCE) not in sys.path:
    sys.path.insert(0, str(APP_SOURCE))
