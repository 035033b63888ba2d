"""Power of two choices over a peak-EWMA of latency, weighted by outstanding requests.

Linkerd's default balancer (tower's `PeakEwma` + `p2c`): pick two endpoints at random and
send to the one with the lower cost, where cost = latency estimate × (outstanding + 1).
Two random choices avoid the herd that "always the least loaded" causes when many
clients share stale load figures, and cost nothing per endpoint (no sort, no scan).

The latency estimate is time-weighted, not sample-weighted: it moves toward each new
sample by `1 - exp(-elapsed / decay)`, and toward zero while nothing is observed, so an
endpoint that was slow a while ago is tried again rather than shunned forever. A sample
above the estimate replaces it at once (the "peak"), so an endpoint that turns slow is
avoided from its first slow answer. A failed request never lowers the estimate: a fast
503 must not make an endpoint look fast (outlier detection deals with failures).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from trustmesh.sidecar.config import HostPort, StaticEndpoint

# tower's defaults: an endpoint with requests in flight but no answer yet is assumed to answer
# in 30 ms, and an estimate forgets at a 10 s scale. (An endpoint never tried at all costs 0:
# see `cost`.)
DEFAULT_RTT = 0.030
DEFAULT_DECAY = 10.0

# Estimates of endpoints that left the service are dropped once the table is this much
# larger than the current endpoint list (bounded memory under endpoint churn).
_PRUNE_SLACK = 64


class _Estimate:
    __slots__ = ("outstanding", "rtt", "stamp")

    def __init__(self, rtt: float, stamp: float) -> None:
        self.rtt = rtt
        self.stamp = stamp
        self.outstanding = 0


class PeakEwmaP2C:
    """The default balancer. Pure: time comes in as `now`, randomness from `rng`."""

    def __init__(
        self,
        *,
        rng: random.Random | None = None,
        default_rtt: float = DEFAULT_RTT,
        decay: float = DEFAULT_DECAY,
    ) -> None:
        self._random = (rng or random.Random()).random
        self._default_rtt = default_rtt
        self._decay = decay
        self._state: dict[HostPort, _Estimate] = {}

    def pick(self, endpoints: Sequence[StaticEndpoint], now: float) -> StaticEndpoint:
        n = len(endpoints)
        if n == 1:
            return endpoints[0]
        if len(self._state) > 2 * n + _PRUNE_SLACK:
            self._prune(endpoints)
        rand = self._random
        i = int(rand() * n)
        j = int(rand() * (n - 1))
        if j >= i:
            j += 1
        a = endpoints[i]
        b = endpoints[j]
        return a if self.cost(a, now) <= self.cost(b, now) else b

    def cost(self, ep: StaticEndpoint, now: float) -> float:
        """Latency estimate (decayed to `now`) × (outstanding + 1): lower is better."""
        est = self._state.get(ep.address)
        if est is None:
            # Never tried: optimistic, so a new (or returning) endpoint gets a request and a real
            # estimate. Judged at the default RTT it would never beat a known fast endpoint under
            # light, sequential traffic, and would receive nothing at all.
            return 0.0
        self._observe(est, now, 0.0)
        return est.rtt * (est.outstanding + 1)

    def start(self, ep: StaticEndpoint) -> None:
        est = self._state.get(ep.address)
        if est is None:
            est = self._state[ep.address] = _Estimate(self._default_rtt, -math.inf)
        est.outstanding += 1

    def finish(self, ep: StaticEndpoint, now: float, rtt: float, *, failed: bool) -> None:
        est = self._state.get(ep.address)
        if est is None:
            return  # pruned while in flight: its next request starts it afresh
        if est.outstanding > 0:
            est.outstanding -= 1
        if failed:
            rtt = max(rtt, est.rtt)
        self._observe(est, now, rtt)

    def outstanding(self, ep: StaticEndpoint) -> int:
        est = self._state.get(ep.address)
        return 0 if est is None else est.outstanding

    def _observe(self, est: _Estimate, now: float, rtt: float) -> None:
        if est.stamp == -math.inf:
            est.stamp = now  # first sample: nothing to decay from yet
        if rtt > est.rtt:
            est.rtt = rtt
        else:
            elapsed = now - est.stamp
            if elapsed > 0:
                w = math.exp(-elapsed / self._decay)
                est.rtt = est.rtt * w + rtt * (1.0 - w)
        if now > est.stamp:
            est.stamp = now

    def _prune(self, endpoints: Sequence[StaticEndpoint]) -> None:
        live = {ep.address for ep in endpoints}
        for address in [a for a, est in self._state.items() if a not in live and est.outstanding == 0]:
            del self._state[address]
