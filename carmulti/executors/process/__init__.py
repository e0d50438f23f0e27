"""The process executor: agents run in a pool of worker processes connected by ZeroMQ.

See :mod:`.executor` for how the package is divided (supervision, scheduling,
services, shipping, wire, worker, proxies).
"""

from .executor import ProcessExecutor

__all__ = ["ProcessExecutor"]
