"""``python -m outpost.cloud.receiver serve|enroll|revoke``: the receiver without the agent's CLI."""

import sys

from .server import main

sys.exit(main())
