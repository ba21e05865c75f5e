"""State-slot manager: hands out the per-sequence state slots of stateful mixers (SSM, conv, delta rule).

A running sequence owns one slot from admission until it finishes or is preempted; a slot belongs to one sequence at
a time. A new owner needs no clearing: the cached mixers ignore a slot's old contents when a sequence starts from
position 0 (`use_initial_states = input_pos > 0`), which is also what makes a preempted request that recomputes its
prompt start clean.
"""

from __future__ import annotations


class SlotManager:
    """A free list over `num_slots` slots. Allocation order is deterministic (lowest first)."""

    def __init__(self, num_slots: int):
        self.num_slots = num_slots
        self._free = list(range(num_slots - 1, -1, -1))  # a stack: pop() gives the lowest free slot

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        if not self._free:
            raise RuntimeError(f"all {self.num_slots} state slots are in use")
        return self._free.pop()

    def release(self, slot: int) -> None:
        if slot in self._free or not 0 <= slot < self.num_slots:
            raise RuntimeError(f"state slot {slot} released twice or out of range")
        self._free.append(slot)
