"""The HTTP routes: each module one router over the services in ``runtime.server.services``."""
