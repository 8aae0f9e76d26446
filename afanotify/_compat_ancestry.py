"""Is a pid this process or one of its descendants?  (afanotify.compat filters those.)"""

from __future__ import annotations

from collections import OrderedDict


class _Ancestry:
    """Is a pid this process or one of its descendants?  Walks /proc/<pid>/stat.

    Answers are cached per pid for ``ttl`` seconds (bounded LRU), so a burst
    from one process costs one walk.  The ttl bounds how long a reused pid
    can be misjudged.  A process that has already exited cannot be traced and
    counts as foreign, as in pyfanotify.
    """

    def __init__(self, root: int, size: int = 4096, ttl: float = 2.0) -> None:
        self.root = root
        self._size = size
        self._ttl = ttl
        self._cache: OrderedDict[int, tuple[bool, float]] = OrderedDict()
        self.walks = 0

    def is_ours(self, pid: int, now: float) -> bool:
        if pid == self.root:
            return True
        cache, ttl = self._cache, self._ttl
        hit = cache.get(pid)
        if hit is not None and now - hit[1] < ttl:
            return hit[0]
        self.walks += 1
        ours = False
        chain = [pid]
        p = pid
        for _ in range(256):  # a bound in case /proc shows a cycle mid-reparenting
            ppid = _ppid(p)
            if ppid is None or ppid <= 1:
                break
            if ppid == self.root:
                ours = True
                break
            # An ancestor answered recently answers for its whole subtree, so
            # a shell's next child costs one read, not a walk to init.
            hit = cache.get(ppid)
            if hit is not None and now - hit[1] < ttl:
                ours = hit[0]
                break
            chain.append(ppid)
            p = ppid
        # Every process on the walked chain has the same answer.
        for q in chain:
            cache[q] = (ours, now)
            cache.move_to_end(q)
        while len(cache) > self._size:
            cache.popitem(last=False)
        return ours


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
    tail = data[data.rfind(b")") + 2:].split(None, 2)
    try:
        return int(tail[1])
    except (IndexError, ValueError):
        return None
