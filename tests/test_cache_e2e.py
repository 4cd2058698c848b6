"""The node's cache of read-mostly trees, end to end: what a run sees, and when.

Whether a file came from the node's disk or through the share shows inside the run: overlayfs
gives the files of each layer a device number of their own, so a file read through the share
has the device of a marker file made just before the run (which no cache can hold yet), and a
copy from the cache another one.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import DEV_USER, Pool, wait_for

pytestmark = pytest.mark.e2e

TREES = "HWSCHED_CACHE_TREES"
#: prints the file's content, then whether it came from the cache (a device other than the
#: marker's, which comes through the share)
SHOW = "cat {f}; echo; [ $(stat -c %d {f}) = $(stat -c %d {marker}) ] && echo share || echo cache"
MARKER = "MARKER"


def _with_marker(script: str, tree: Path) -> str:
    """``script`` with a new marker file of the tree's in place of MARKER."""
    if MARKER not in script:
        return script
    marker = tree / f".marker-{uuid.uuid4().hex[:8]}"
    marker.write_text("m")
    os.chown(marker, pwd.getpwnam(DEV_USER).pw_uid, -1)
    return script.replace(MARKER, str(marker))


def show(path: str | Path) -> str:
    return SHOW.format(f=path, marker=MARKER)


def _store_objects(pool: Pool, agent: str = "agent") -> list[Path]:
    return list((pool.state / agent / "cache").glob("*/objects/*"))


def _copied(pool: Pool, path: Path, agent: str = "agent") -> bool:
    name = hashlib.sha256(str(path).encode()).hexdigest()
    return any(p.name == name for p in _store_objects(pool, agent))


def _tree(workspace: Path, files: dict[str, str], mode: int = 0o755) -> Path:
    """A tree of the developer's, owned by them, outside the working directory."""
    dev = pwd.getpwnam(DEV_USER)
    tree = workspace / "env"
    tree.mkdir(exist_ok=True)
    for name, text in files.items():
        path = tree / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for path in [tree, *tree.rglob("*")]:
        os.chown(path, dev.pw_uid, dev.pw_gid)
    tree.chmod(mode)
    return tree


def _run(pool: Pool, workspace: Path, script: str, user: str = DEV_USER, **env: str) -> str:
    done = pool.hwrun(
        ["--gpu", "1", "--", "sh", "-c", _with_marker(script, workspace / "env")],
        user=user,
        cwd=str(workspace),
        env={TREES: str(workspace / "env"), **env},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _run_until_copied(pool: Pool, workspace: Path, script: str, paths: list[Path]) -> str:
    """Run ``script``, keep the session open until the node has copied ``paths``."""
    go = workspace / f"go-{uuid.uuid4().hex[:6]}"
    held = pool.popen_hwrun(
        [
            "--gpu",
            "1",
            "--",
            "sh",
            "-c",
            f"{_with_marker(script, workspace / 'env')}; "
            f"while [ ! -e {go.name} ]; do sleep 0.1; done",
        ],
        user=DEV_USER,
        cwd=str(workspace),
        env={TREES: str(workspace / "env")},
    )
    try:
        wait_for(lambda: all(_copied(pool, p) for p in paths), 60, "the node to copy the files")
    finally:
        go.touch()
        out, err = held.communicate(timeout=120)
    assert held.returncode == 0, err
    return out


def test_a_second_run_reads_copies_and_sees_every_change_made_before_it(
    clean_pool: Pool, dev_workspace: Path
) -> None:
    tree = _tree(dev_workspace, {"pkg/a.py": "A1", "pkg/b.py": "B1"})
    a, b = tree / "pkg" / "a.py", tree / "pkg" / "b.py"
    first = _run_until_copied(clean_pool, dev_workspace, show("env/pkg/a.py"), [a, b])
    assert first.split() == ["A1", "share"]  # b.py, a neighbour, was copied too
    second = _run(clean_pool, dev_workspace, show("env/pkg/a.py"))
    assert second.split() == ["A1", "cache"]
    # changed on the developer's side before the next run: same size, mtime put back; only
    # its ctime tells (which no one can set)
    before = a.stat()
    a.write_text("A2")
    os.utime(a, ns=(before.st_atime_ns, before.st_mtime_ns))
    b.unlink()
    (tree / "pkg" / "c.py").write_text("C1")
    third = _run(
        clean_pool,
        dev_workspace,
        show("env/pkg/a.py") + "; ls env/pkg; touch env/pkg/new 2>&1 || true",
    )
    lines = third.splitlines()
    assert lines[0:2] == ["A2", "share"], third
    assert lines[2:4] == ["a.py", "c.py"], third
    assert "Read-only file system" in lines[4]  # a cached tree is read-only in the run


def test_a_change_in_the_working_directory_reaches_a_running_session_within_a_second(
    clean_pool: Pool, dev_workspace: Path
) -> None:
    """The share's attribute cache lasts 1 s (``attr_timeout=1``, ``auto_cache``): a file
    read, changed on the developer's side, and read again 1.5 s after the change has the
    new content (the same size, so that only its mtime tells)."""
    data = dev_workspace / "data.txt"
    data.write_text("old")
    ready, changed = dev_workspace / "ready", dev_workspace / "changed"
    script = (
        "cat data.txt; echo; touch ready; "
        "while [ ! -e changed ]; do cat data.txt > /dev/null; sleep 0.05; done; "
        "sleep 1.5; cat data.txt"
    )
    held = clean_pool.popen_hwrun(
        ["--gpu", "1", "--", "sh", "-c", script], user=DEV_USER, cwd=str(dev_workspace)
    )
    try:
        wait_for(ready.exists, 60, "the run to read the file")
        time.sleep(0.2)
        data.write_text("new")
        changed.touch()
        out, err = held.communicate(timeout=120)
    finally:
        if held.poll() is None:
            held.kill()
    assert held.returncode == 0, err
    assert out.split() == ["old", "new"]


def test_a_run_writes_straight_to_the_developers_disk(
    clean_pool: Pool, dev_workspace: Path
) -> None:
    out = _run(
        clean_pool,
        dev_workspace,
        "head -c 3000000 /dev/zero > out.bin; echo written",
    )
    assert out.strip() == "written"
    assert (dev_workspace / "out.bin").stat().st_size == 3_000_000  # as soon as hwrun returns


@pytest.fixture()
def nobody_workspace() -> Iterator[Path]:
    """A working directory for the account ``nobody``: another developer on the machine."""
    path = Path("/var/lib/hwsched-test") / f"nobody-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    entry = pwd.getpwnam("nobody")
    os.chown(path, entry.pw_uid, entry.pw_gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_copy_is_never_served_to_another_users_session(
    clean_pool: Pool, dev_workspace: Path, nobody_workspace: Path
) -> None:
    tree = _tree(dev_workspace, {"open/mod.py": "OPEN", "closed/secret.py": "SECRET"})
    (tree / "closed").chmod(0o700)
    dev_workspace.chmod(0o755)
    paths = [tree / "open" / "mod.py", tree / "closed" / "secret.py"]
    _run_until_copied(clean_pool, dev_workspace, "cat env/open/mod.py env/closed/secret.py", paths)
    assert _run(clean_pool, dev_workspace, show("env/closed/secret.py")).split() == [
        "SECRET",
        "cache",
    ]
    # another user, asking for the same tree: its copies are not theirs to read
    script = f"{show(tree / 'open' / 'mod.py')}; cat {tree / 'closed' / 'secret.py'}"
    other = clean_pool.hwrun(
        ["--gpu", "1", "--", "sh", "-c", _with_marker(script, tree)],
        user="nobody",
        cwd=str(nobody_workspace),
        env={TREES: str(tree)},
    )
    lines = other.stdout.split()
    assert lines == ["OPEN", "share"], other.stdout + other.stderr
    assert "Permission denied" in other.stderr
    assert "SECRET" not in other.stdout


@pytest.fixture()
def small_cache_pool(tmp_path: Path) -> Iterator[Pool]:
    pool = Pool(tmp_path, agent_args=("--NodeCache.max_bytes=3000000",))
    try:
        yield pool
    finally:
        pool.stop()


def test_a_full_cache_evicts_and_a_restarted_node_keeps_its_copies(
    small_cache_pool: Pool, dev_workspace: Path
) -> None:
    pool = small_cache_pool
    # apart, so that copying one does not bring the other as its neighbour
    tree = _tree(dev_workspace, {"a/one.bin": "1" * 2_000_000, "b/two.bin": "2" * 2_000_000})
    one, two = tree / "a" / "one.bin", tree / "b" / "two.bin"

    def cached_bytes() -> int:
        return sum(p.stat().st_size for p in _store_objects(pool))

    _run_until_copied(pool, dev_workspace, "cat env/a/one.bin > /dev/null", [one])
    _run_until_copied(pool, dev_workspace, "cat env/b/two.bin > /dev/null", [two])
    # two copies of 2 MB do not fit in 3 MB: the least recently used went
    assert cached_bytes() <= 3_000_000
    assert _copied(pool, two) and not _copied(pool, one)
    both = "head -c 3 env/a/one.bin; echo; " + show("env/b/two.bin")
    assert _run(pool, dev_workspace, both.replace("cat ", "head -c 3 ")).split() == [
        "111",
        "222",
        "cache",
    ]
    assert cached_bytes() <= 3_000_000  # that run copied one.bin again, and one had to go
    kept = [p for p in (one, two) if _copied(pool, p)]
    assert len(kept) == 1
    # the agent restarts: the copy it had is still good
    agent = pool.services.pop(1)
    agent.stop()
    restarted = pool.agent_service(
        pool.node, pool.agent_port, "2xA100-80GB", pool.agent_args, "agent"
    )
    pool.services.insert(1, restarted)
    restarted.wait_line("HWSCHED_AGENT_READY")
    again = show(kept[0].relative_to(dev_workspace)).replace("cat ", "head -c 3 ")
    assert _run(pool, dev_workspace, again).split()[1] == "cache"
    pool.assert_clean()


def _hwsched(pool: Pool, args: list[str], user: str | None = None) -> str:
    argv = pool.client_cmd([sys.executable, "-m", "jupyter_hwsched.cli.hwsched", *args], user)
    done = subprocess.run(argv, env=pool.client_env, capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_developer_and_the_operator_can_purge(clean_pool: Pool, dev_workspace: Path) -> None:
    tree = _tree(dev_workspace, {"f.py": "F"})
    _run_until_copied(clean_pool, dev_workspace, "cat env/f.py", [tree / "f.py"])
    # the developer: nodes drop the copies the next time they serve them
    assert "forgot hwdev's hot set" in _hwsched(clean_pool, ["cache", "forget"], user=DEV_USER)
    # (that run read it through the share, and so the node copied it again)
    assert _run(clean_pool, dev_workspace, show("env/f.py")).split() == ["F", "share"]
    # the operator: at once, on one node
    _run_until_copied(clean_pool, dev_workspace, "cat env/f.py", [tree / "f.py"])
    node = f"http://127.0.0.1:{clean_pool.agent_port}"
    purged = json.loads(_hwsched(clean_pool, ["cache", "purge", "--node", node]))
    assert purged["freed_bytes"] >= 1 and purged["bytes"] == 0
    assert not _copied(clean_pool, tree / "f.py")
    assert json.loads(_hwsched(clean_pool, ["cache", "status", "--node", node]))["bytes"] == 0


@pytest.fixture()
def two_node_pool(tmp_path: Path) -> Iterator[Pool]:
    """A pool of its own: a second node would change what the shared pool's tests see."""
    pool = Pool(tmp_path)
    try:
        pool.add_agent("zz-warm-node", "2xA100-80GB")
        yield pool
    finally:
        pool.stop()


def test_placement_prefers_the_node_that_keeps_the_developers_files(
    two_node_pool: Pool, dev_workspace: Path
) -> None:
    """Two nodes with the same free GPUs; packing alone picks the pool's first node (its name
    sorts first). Once the other one keeps hwdev's files, hwdev's runs go there."""
    clean_pool, warm = two_node_pool, "zz-warm-node"
    tree = _tree(dev_workspace, {"w.py": "W"})
    where = "echo $HWSCHED_NODE"
    assert _run(clean_pool, dev_workspace, where).strip() == clean_pool.node
    # a run on the other node leaves its copies there
    go = dev_workspace / "go-warm"
    held = clean_pool.popen_hwrun(
        [
            "--node",
            warm,
            "--",
            "sh",
            "-c",
            f"cat env/w.py; while [ ! -e {go.name} ]; do sleep 0.1; done",
        ],
        user=DEV_USER,
        cwd=str(dev_workspace),
        env={TREES: str(tree)},
    )
    try:
        wait_for(lambda: _copied(clean_pool, tree / "w.py", f"agent-{warm}"), 60, "a copy")
    finally:
        go.touch()
        held.communicate(timeout=120)

    def reported() -> bool:
        nodes = {n["name"]: n for n in clean_pool.pool()["nodes"]}
        return bool(nodes[warm]["cache_warm_for"])

    wait_for(reported, 60, "the node's heartbeat to say it keeps hwdev's files")
    assert _run(clean_pool, dev_workspace, where).strip() == warm
    # root, whose files no node keeps, is packed as before
    done = clean_pool.hwrun(["--", "sh", "-c", where], cwd="/")
    assert done.stdout.strip() == clean_pool.node, done.stderr
    clean_pool.assert_clean()
