"""The agent's uplink to the central receiver (see :mod:`.service` for its guarantees).

Modules: ``service`` (the :class:`Uplink` and its sync loop), ``batches`` (batch choice and
encoding), ``delivery`` (send, classify, bisect, dead-letter), ``enroll``, ``heartbeat``,
``session`` (shared state and counters), ``support`` (backoff, bandwidth cap, token file).
"""

from outpost.cloud.uplink.service import Uplink
from outpost.cloud.uplink.session import UplinkAuthError, UplinkConfigError

__all__ = ["Uplink", "UplinkAuthError", "UplinkConfigError"]
