"""``python -m atlas_sink``: the same as the ``atlas-sink`` command."""

import sys

from atlas_sink.service.cli import main

sys.exit(main())
