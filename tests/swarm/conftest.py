"""The Swarm tests run only where tests/swarm/run.sh has deployed the stack and says where it is
(``SWARM_ENTRY_URL``); elsewhere they are not collected at all (the compose run has no swarm)."""

import os

if not os.environ.get("SWARM_ENTRY_URL"):
    collect_ignore_glob = ["test_*.py"]
