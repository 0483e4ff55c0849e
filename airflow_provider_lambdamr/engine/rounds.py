"""Reduce rounds, and the map tasks of a later step: which tasks come next, from what is done.

A partition's runs are merged in rounds of groups of at most ``fan_in`` runs until at most
``fan_in`` remain; the final round's one task reduces them. Round N's groups are cut from
round N-1's outputs in group order, so the plan is the same in every process that rebuilds
it from the status records.
"""

from __future__ import annotations

from lambda_src import contract

#: A task to create: the partition's rounds (its round, whether final), its group, its inputs.
Pending = tuple["PartitionRounds", int, list[str]]


class PartitionRounds:
    """The reduce rounds of one partition: groups of at most F runs until one remains."""

    def __init__(self, partition: int, inputs: list[str], fan_in: int, step: int = 0) -> None:
        self.partition = partition
        self.step = step
        self.fan_in = fan_in
        self.round = 1
        self.inputs = list(inputs)
        self.outputs: dict[int, str] = {}
        self.finished = False

    @property
    def final(self) -> bool:
        return len(self.inputs) <= self.fan_in

    def groups(self) -> list[list[str]]:
        if self.final:
            return [self.inputs]
        return [self.inputs[i: i + self.fan_in] for i in range(0, len(self.inputs), self.fan_in)]

    def pending_groups(self) -> list[tuple[int, list[str]]]:
        """Groups of this round that need a task (a lone run passes through untouched)."""
        out = []
        for g, inputs in enumerate(self.groups()):
            if g in self.outputs:
                continue
            if len(inputs) == 1 and not self.final:
                self.outputs[g] = inputs[0]
                continue
            out.append((g, inputs))
        return out

    def status_key(self, group: int) -> str:
        return contract.reduce_status_key(self.step, self.round, self.partition, group)

    def complete(self, group: int, record: dict) -> None:
        outs = record.get("outputs") or [{}]
        self.outputs[group] = outs[0].get("uri", "")
        if self.final:
            self.finished = True

    def round_complete(self) -> bool:
        return len(self.outputs) == len(self.groups())

    def advance(self) -> None:
        self.inputs = [self.outputs[g] for g in range(len(self.groups()))]
        self.outputs = {}
        self.round += 1

    def expected_tasks(self) -> int:
        n, total = len(self.inputs), 0
        while n > self.fan_in:
            groups = -(-n // self.fan_in)
            total += groups - (1 if n % self.fan_in == 1 else 0)
            n = groups
        return total + 1


class ReduceRounds:
    """Every partition's rounds of one step's reduce, skipping the tasks already committed."""

    def __init__(self, map_records: list[dict], partitions: int, fan_in: int, step: int,
                 done: dict[str, dict]) -> None:
        runs: list[list[str]] = [[] for _ in range(partitions)]
        for rec in map_records:
            for out in rec.get("outputs", []):
                if out.get("records", 0) > 0:
                    runs[int(out["partition"])].append(out["uri"])
        self.partitions = partitions
        self.done = done
        self.state = {p: PartitionRounds(p, runs[p], fan_in, step) for p in range(partitions)}
        #: The final round's record of each finished partition.
        self.finals: dict[int, dict] = {}

    def expected_tasks(self) -> int:
        return sum(s.expected_tasks() for s in self.state.values())

    def start(self) -> list[Pending]:
        """The runnable tasks of every partition."""
        return [t for p in range(self.partitions) for t in self.next_tasks(p)]

    def next_tasks(self, p: int) -> list[Pending]:
        """Next runnable tasks of partition p, past the rounds whose tasks are all done."""
        rounds = self.state[p]
        while True:
            new: list[Pending] = []
            for group, inputs in rounds.pending_groups():
                key = rounds.status_key(group)
                if key in self.done:
                    rounds.complete(group, self.done[key])
                    if rounds.final:
                        self.finals[p] = self.done[key]
                    continue
                new.append((rounds, group, inputs))
            if new or rounds.finished:
                return new
            rounds.advance()

    def complete(self, p: int, group: int, record: dict) -> list[Pending]:
        """Record a committed task; the tasks this makes runnable (the next round's)."""
        rounds = self.state[p]
        rounds.complete(group, record)
        if rounds.final and rounds.round_complete():
            self.finals[p] = record
            rounds.finished = True
            return []
        if rounds.round_complete():
            rounds.advance()
            return self.next_tasks(p)
        return []

    def missing(self) -> list[int]:
        """Partitions without a final result."""
        return [p for p in range(self.partitions) if p not in self.finals]


def pack_final_runs(finals: dict[int, dict], split_size: int, max_files: int) -> list[tuple[list[str], int]]:
    """A later step's map tasks: the previous step's non-empty final runs, packed by bytes."""
    runs = [
        (o["uri"], int(o.get("bytes", 0)))
        for _, rec in sorted(finals.items()) for o in rec.get("outputs", [])
        if o.get("records", 0) > 0
    ]
    tasks: list[tuple[list[str], int]] = []
    limit = max(1, split_size)
    for uri, size in runs:
        if tasks and tasks[-1][1] + size <= limit and len(tasks[-1][0]) < max_files:
            tasks[-1][0].append(uri)
            tasks[-1] = (tasks[-1][0], tasks[-1][1] + size)
        else:
            tasks.append(([uri], size))
    return tasks
