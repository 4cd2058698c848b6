"""``python -m jupyter_hwsched.developer.kernel -f CONNECTION_FILE ...``: the Remote GPU kernel."""

import sys

from jupyter_hwsched.developer.kernel.launcher import main

sys.exit(main())
