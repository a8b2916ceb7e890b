"""Workers: claim a job, run it on the engine, report back.

A worker knows only the protocol (`kakumei.protocol`): `JobSource` is its whole view of the
server. The in-process worker of `kakumei serve` gets the server's store-backed source
(`server/job_source.py`); a remote worker speaks the same calls over HTTP (`remote.py`).
"""

from kakumei.worker.loop import Worker

__all__ = ["Worker"]
