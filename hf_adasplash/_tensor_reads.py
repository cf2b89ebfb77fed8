"""Values read from a tensor's contents (a device sync), kept per tensor object until it changes.

A model's layers all receive the same ``position_ids`` / ``cu_seqlens`` tensors: reading them once per forward
instead of once per layer spares a device sync in each layer. The key is the object itself (a weak reference, so a
new tensor at a freed one's address is read again) and its version counter (so an in-place change is too).
"""

import weakref


class TensorReads:
    def __init__(self, size: int = 8):
        self.size, self._seen = size, {}

    def get(self, t, extra, read):
        """``read(t)``, or what it gave for this same tensor, unchanged since, with the same ``extra``."""
        seen = self._seen.get(id(t))
        if seen is not None and seen[0]() is t and seen[1] == (t._version, extra):
            return seen[2]
        value = read(t)
        if len(self._seen) >= self.size:
            self._seen.clear()
        self._seen[id(t)] = (weakref.ref(t), (t._version, extra), value)
        return value
