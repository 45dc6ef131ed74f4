"""iflow: the terminal coding agent of ALE. `python3 -m iflow_cli --help`.

The core (agent loop, model client, tools, config, executors) imports only the Python standard
library, so the package runs on a bare python3 mounted read-only into any sandbox image.
"""

from iflow_cli.version import __version__

__all__ = ["__version__"]
