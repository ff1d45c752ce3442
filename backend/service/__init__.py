"""HTTP API v1 of the backend (docs/design.md): FastAPI app, on-disk job store and the single engine worker."""

from backend.service.app import create_app
from backend.service.server import BackgroundServer, default_data_dir, serve

__all__ = ["BackgroundServer", "create_app", "default_data_dir", "serve"]
