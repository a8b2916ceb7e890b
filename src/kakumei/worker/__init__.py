"""Workers: claim a job, run it on the engine, report back.

`JobSource` is the worker's whole view of the server. The in-process worker of
`kakumei serve` uses `StoreJobSource`; a remote worker speaks the same calls over HTTP.
"""

from kakumei.worker.loop import Worker
from kakumei.worker.source import JobSource, StoreJobSource

__all__ = ["JobSource", "StoreJobSource", "Worker"]
