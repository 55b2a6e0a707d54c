"""`fsdriver.treelock`: a rename against the operations naming paths in what it moves (no kernel)."""

import trio
import trio.testing

from fsdriver.treelock import TreeLock

A, AD, AD_F, B, C = ("a",), ("a", "d"), ("a", "d", "f"), ("b",), ("c",)


def run(body, clock=None):
    async def main():
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await body(TreeLock(), nursery)

    trio.run(main, clock=clock)


def step(log: list, name: str):
    """A task body that notes when it got in and holds until ``release`` is set."""
    release = trio.Event()

    async def enter(cm):
        async with cm:
            log.append(name)
            await release.wait()
        log.append(name + " done")

    return enter, release


def test_a_rename_waits_for_the_operations_under_way_below_it_and_new_ones_wait_for_it():
    async def body(tree, nursery):
        log = []
        lookup, lookup_done = step(log, "lookup a/d/f")
        nursery.start_soon(lookup, tree.using(lambda: [AD_F]))
        await trio.testing.wait_all_tasks_blocked()
        rename, rename_done = step(log, "rename a")
        nursery.start_soon(rename, tree.moving(lambda: [A, B]))
        await trio.testing.wait_all_tasks_blocked()
        assert tree.moving_roots == [A, B] and "rename a" not in log  # it waits for the lookup
        later, later_done = step(log, "getattr a/d")
        nursery.start_soon(later, tree.using(lambda: [AD]))
        elsewhere, elsewhere_done = step(log, "lookup c")
        nursery.start_soon(elsewhere, tree.using(lambda: [C]))
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["lookup a/d/f", "lookup c"]  # a/d waits behind the rename; c goes on
        lookup_done.set()
        await trio.testing.wait_all_tasks_blocked()
        assert log[-2:] == ["lookup a/d/f done", "rename a"]
        rename_done.set()
        await trio.testing.wait_all_tasks_blocked()
        assert log[-2:] == ["rename a done", "getattr a/d"]
        later_done.set()
        elsewhere_done.set()
        await trio.testing.wait_all_tasks_blocked()
        assert not tree.moving_roots

    run(body)


def test_paths_are_computed_again_after_a_wait():
    """An operation that waited for a rename names its paths as they are after the move."""
    async def body(tree, nursery):
        where = {"parent": A}
        rename, rename_done = step([], "rename")
        nursery.start_soon(rename, tree.moving(lambda: [A, B]))
        await trio.testing.wait_all_tasks_blocked()
        got = []

        async def lookup():
            async with tree.using(lambda: [where["parent"] + ("f",)]):
                got.append(where["parent"])

        nursery.start_soon(lookup)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        where["parent"] = B  # the rename moved it (the table says so before the rename returns)
        rename_done.set()
        await trio.testing.wait_all_tasks_blocked()
        assert got == [B]

    run(body)


def test_a_task_using_paths_uses_more_without_waiting_for_a_rename_waiting_for_it():
    """open(O_TRUNC) truncates through setattr: its second use must not wait for the rename
    that waits for its first (a deadlock)."""
    async def body(tree, nursery):
        inner_go = trio.Event()
        done = []

        async def open_truncate():
            async with tree.using(lambda: [AD_F]):
                await inner_go.wait()
                async with tree.using(lambda: [AD_F]):
                    done.append("truncated")

        nursery.start_soon(open_truncate)
        await trio.testing.wait_all_tasks_blocked()
        rename, rename_done = step(done, "rename")
        nursery.start_soon(rename, tree.moving(lambda: [A, B]))
        await trio.testing.wait_all_tasks_blocked()
        inner_go.set()
        await trio.testing.wait_all_tasks_blocked()
        assert done == ["truncated", "rename"]
        rename_done.set()

    run(body)


def test_a_nested_use_of_another_path_below_a_rename_still_waits_for_it():
    """Only what the task holds already is used again without waiting: a nested use of another
    path in a subtree a rename waits for would slip under it."""
    async def body(tree, nursery):
        go = trio.Event()
        log = []

        async def op():
            async with tree.using(lambda: [C]):
                await go.wait()
                async with tree.using(lambda: [AD_F]):
                    log.append("a/d/f")

        nursery.start_soon(op)
        await trio.testing.wait_all_tasks_blocked()
        rename, rename_done = step(log, "rename")
        nursery.start_soon(rename, tree.moving(lambda: [A, B]))
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["rename"]  # nothing under way below a and b: it holds them
        go.set()
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["rename"]  # a/d/f waits
        rename_done.set()
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["rename", "rename done", "a/d/f"]

    run(body)


def test_each_side_knows_how_long_it_waited():
    """(A request's backend deadline gets that time back.)"""
    async def body(tree, nursery):
        waits = {}

        async def lookup(name, path, hold):
            async with tree.using(lambda: [path]) as waited:
                waits[name] = waited
                await trio.sleep(hold)

        async def rename():
            async with tree.moving(lambda: [A, B]) as waited:
                waits["rename"] = waited
                await trio.sleep(5)

        nursery.start_soon(lookup, "before", AD_F, 2)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(rename)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(lookup, "after", AD, 0)
        nursery.start_soon(lookup, "elsewhere", C, 0)
        await trio.sleep(10)
        assert waits == {"before": 0, "elsewhere": 0, "rename": 2, "after": 7}

    run(body, trio.testing.MockClock(autojump_threshold=0))


def test_overlapping_renames_take_turns_and_disjoint_ones_do_not_wait():
    async def body(tree, nursery):
        log = []
        first, first_done = step(log, "mv a b")
        nursery.start_soon(first, tree.moving(lambda: [A, B]))
        await trio.testing.wait_all_tasks_blocked()
        inner, inner_done = step(log, "mv a/d c")
        nursery.start_soon(inner, tree.moving(lambda: [AD, C]))
        other, other_done = step(log, "mv x y")
        nursery.start_soon(other, tree.moving(lambda: [("x",), ("y",)]))
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["mv a b", "mv x y"]
        first_done.set()
        await trio.testing.wait_all_tasks_blocked()
        assert log[-1] == "mv a/d c"
        inner_done.set()
        other_done.set()

    run(body)


def test_a_cancelled_rename_lets_the_operations_it_held_back_go_on():
    async def body(tree, nursery):
        log = []
        lookup, lookup_done = step(log, "lookup a/d/f")
        nursery.start_soon(lookup, tree.using(lambda: [AD_F]))
        await trio.testing.wait_all_tasks_blocked()
        cancel = trio.CancelScope()

        async def rename():
            with cancel:
                async with tree.moving(lambda: [A, B]):
                    log.append("rename")

        nursery.start_soon(rename)
        await trio.testing.wait_all_tasks_blocked()
        later, later_done = step(log, "getattr a/d")
        nursery.start_soon(later, tree.using(lambda: [AD]))
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["lookup a/d/f"]
        cancel.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["lookup a/d/f", "getattr a/d"] and not tree.moving_roots
        lookup_done.set()
        later_done.set()

    run(body)
