"""The dashboard: a Starlette app over a :class:`DashboardSource` (see ``_app`` and ``_source``)."""

from dsched.dashboard._app import create_app
from dsched.dashboard._source import DashboardSource, Metric, ProfileQuery

__all__ = ["DashboardSource", "Metric", "ProfileQuery", "create_app"]
