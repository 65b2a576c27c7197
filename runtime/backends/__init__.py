"""Model backends: one interface (``base.Backend``), one file per kind of model server."""
