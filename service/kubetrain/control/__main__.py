"""`python -m kubetrain.control` runs the operator."""

import sys

from .main import main

sys.exit(main())
