"""The web dashboard: the queue per service, its recent history as a chart, the failed requests
with buttons to retry or close each.

It reads what `titanic info` reads (mmi.broker and titanic.manage, through the broker) and acts
through the same services (titanic.manage's retry, 9/TSP's titanic.close), so it runs anywhere
a client can. Flask serves it; plotly.js, from the plotly package, draws the chart, so nothing is
fetched from the network at run time. Every request passes the checks of
titanic.ops.dashboard.access first: a Host of its own, and for actions a token and a same-origin
Origin (docs/security.md, "The dashboard").
"""

from __future__ import annotations

from titanic.ops.dashboard.access import Access, allowed_hosts
from titanic.ops.dashboard.app import create_app
from titanic.ops.dashboard.state import DashboardState

__all__ = ["Access", "DashboardState", "allowed_hosts", "create_app"]
