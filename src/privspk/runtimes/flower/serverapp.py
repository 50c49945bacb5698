"""The Flower ServerApp: runs :func:`privspk.runtimes.flower.server.serve_run` for one submitted run."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Drive the run named by the run config (see :class:`~privspk.runtimes.flower.server.DeploySettings`)."""
    from privspk.runtimes.flower.launch import patch_object_pull_backoff
    from privspk.runtimes.flower.server import serve_run

    patch_object_pull_backoff()  # replies become visible before their objects are uploaded

    logger = logging.getLogger("privspk")
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    serve_run(grid, dict(context.run_config))
