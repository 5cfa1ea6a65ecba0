"""``python -m mtasts_fast`` runs the daemon, like the ``mta-sts-daemon`` script."""

import sys

from mtasts_fast.daemon import main

sys.exit(main())
