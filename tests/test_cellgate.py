"""The compute gate of shared GPUs, on a clock the test moves."""

from __future__ import annotations

from typing import Any

from jupyter_hwsched.agent.cellgate import ADMITTED, SLICED, WAITING, Cell, CellGate


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def gate(**kw: Any) -> tuple[CellGate, Clock, list[tuple[str, str, Any]]]:
    clock, told = Clock(), []
    g = CellGate(
        clock=clock, notify=lambda event, cell, detail: told.append((event, cell.key, detail)), **kw
    )
    return g, clock, told


def test_cells_on_one_gpu_run_one_after_the_other_and_the_second_is_told() -> None:
    g, clock, told = gate()
    assert g.submit(Cell("ann", 0, "a1"))
    assert not g.submit(Cell("bob", 0, "b1"))
    assert g.submit(Cell("cat", 1, "c1"))  # another GPU: no wait
    assert ("waiting", "b1", 1) in told  # "1 cell ahead"
    clock.now += 5
    g.finish("ann", "a1")
    assert told[-1] == (ADMITTED, "b1", 5.0)
    clock.now += 2
    g.finish("bob", "b1")
    assert g.cell_seconds == {"ann": 5.0, "bob": 2.0}


def test_waiting_cells_keep_their_order_and_learn_their_place() -> None:
    g, _, told = gate()
    for i in range(4):
        g.submit(Cell(f"k{i}", 0, f"m{i}"))
    assert [d for e, k, d in told if e == WAITING] == [1, 2, 3]
    g.finish("k0", "m0")
    assert [k for e, k, _ in told if e == ADMITTED] == ["m0", "m1"]
    assert told[-2:] == [(WAITING, "m2", 1), (WAITING, "m3", 2)]


def test_a_long_cell_lets_the_next_run_beside_it_and_both_are_told() -> None:
    g, clock, told = gate(slice_after=60)
    g.submit(Cell("ann", 0, "long"))
    g.submit(Cell("bob", 0, "short"))
    clock.now += 59
    g.tick()
    assert not any(e == SLICED for e, _, _ in told)
    clock.now += 1
    g.tick()
    sliced = [(k, [c.key for c in d]) for e, k, d in told if e == SLICED]
    assert sliced == [("short", ["long"]), ("long", ["short"])]
    assert len(g.running[0]) == 2


def test_more_cells_at_once_when_configured() -> None:
    g, _, _ = gate(concurrent_cells=2)
    assert g.submit(Cell("a", 0, "1")) and g.submit(Cell("b", 0, "2"))
    assert not g.submit(Cell("c", 0, "3"))


def test_a_kernel_that_goes_frees_its_turn_and_its_waiting_cells_are_handed_back() -> None:
    g, clock, _ = gate()
    g.submit(Cell("ann", 0, "a1"))
    g.submit(Cell("bob", 0, "b1"))
    g.submit(Cell("bob", 0, "b2"))
    clock.now += 3
    assert [c.key for c in g.forget("ann")] == []
    assert [c.key for c in g.running[0]] == ["b1"]
    assert [c.key for c in g.forget("bob")] == ["b2"]
    assert g.cell_seconds["ann"] == 3.0
    assert not g.running[0] and not g.waiting[0]


def test_charged_counts_the_running_cell_so_far() -> None:
    g, clock, _ = gate()
    g.submit(Cell("ann", 0, "a1"))
    clock.now += 4
    assert g.charged("ann") == 4.0
