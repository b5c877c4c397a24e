"""Allow ``python -m myoflow``."""

import sys

from myoflow.cli import main

sys.exit(main())
