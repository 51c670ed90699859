"""``python -m outpost.cloud.receiver serve|enroll|revoke|user``: the receiver without the agent's
CLI."""

import sys

if sys.argv[1:2] == ["user"]:
    from .user_cli import main as user_main

    sys.exit(user_main(sys.argv[2:]))

from .server import main

sys.exit(main())
