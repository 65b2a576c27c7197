"""What the server does, apart from HTTP: trajectories as jobs (``solver``), execution sessions
(``sessions``).  Routes (``runtime.server.routes``) call these; these never import a route."""
