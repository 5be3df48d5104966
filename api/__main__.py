"""`python -m api`: serve the API on API_HOST:API_PORT against TEMPORAL_ADDRESS."""

from __future__ import annotations

import uvicorn

from api.app import create_app
from config import configure_logging, get_settings


def main() -> None:
    """Serve until interrupted."""
    configure_logging()
    settings = get_settings()
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,  # keep the format configure_logging set
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
