"""Who ran an activity: ``runinfo.run_info()`` (user, host, versions, git commit), and its id."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def agent_id(agent: dict[str, Any]) -> str:
    """A stable id: the same user, host, versions and commit give the same agent."""
    return hashlib.sha256(json.dumps(agent, sort_keys=True).encode()).hexdigest()[:16]
