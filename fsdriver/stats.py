"""Counters the daemon reports through `mountctl status`."""

import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Stats:
    started: float = field(default_factory=time.time)
    requests: Counter = field(default_factory=Counter)  # FUSE requests by kind
    backend: Counter = field(default_factory=Counter)  # backend calls by kind
    bytes_down: int = 0
    bytes_up: int = 0
    prefetch_hit_bytes: int = 0  # bytes served from data fetched ahead of the reader
    random_reads: int = 0  # reads served by a ranged GET of just the range asked for
    page_cache_kept: int = 0  # opens that kept the kernel page cache (etag unchanged)
    upload_failures: int = 0
    inherited_closes: int = 0  # close()s of inherited descriptors that did not upload (fsdriver.closes)
    background_failures: Counter = field(default_factory=Counter)  # by kind (fsdriver.supervise)

    def as_dict(self) -> dict:
        return {
            "started": self.started,
            "uptime": time.time() - self.started,
            "requests": dict(self.requests),
            "backend_requests": dict(self.backend),
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
            "prefetch_hit_bytes": self.prefetch_hit_bytes,
            "random_reads": self.random_reads,
            "page_cache_kept": self.page_cache_kept,
            "upload_failures": self.upload_failures,
            "inherited_closes": self.inherited_closes,
            "background_failures": dict(self.background_failures),
        }
