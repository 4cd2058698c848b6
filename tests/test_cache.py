"""The cache's parts alone: the share's log, the manifest, the hot set, the store, the views."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from jupyter_hwsched.agent.cache.beneath import OutsideShare, open_beneath
from jupyter_hwsched.agent.cache.node import NodeCache
from jupyter_hwsched.agent.cache.store import UserStore
from jupyter_hwsched.agent.cache.view import OPAQUE, build_view
from jupyter_hwsched.developer.environment import cache_trees
from jupyter_hwsched.developer.share.hotset import HotSets, take_manifest
from jupyter_hwsched.protocol.cache_manifest import (
    CacheEntry,
    CacheManifest,
    opened_for_reading,
    valid_tree,
    with_python_neighbours,
)
from jupyter_hwsched.protocol.errors import RequestError

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="views set owners and trusted xattrs")


def test_a_module_read_brings_its_source_and_its_directory() -> None:
    read = ["/env/pkg/__pycache__/mod.cpython-311.pyc", "/env/lib/libx.so", "/env/tool.py"]
    files, whole = with_python_neighbours(read)
    assert files == [*read[:1], "/env/pkg/mod.py", *read[1:]]
    assert whole == {"/env/pkg", "/env/pkg/__pycache__", "/env", "/env/__pycache__"}


def test_the_share_log_gives_the_files_opened_for_reading_once_each() -> None:
    log = "\n".join(
        [
            "session opened for local user dev from [10.0.0.2]",
            'open "/usr/lib/a.so" flags READ mode 0666',
            'open "/home/dev/out.txt" flags WRITE,CREATE,TRUNCATE mode 0644',
            'open "/usr/lib/with "quotes".py" flags READ mode 0666',
            'open "/usr/lib/a.so" flags READ mode 0666',
            'close "/usr/lib/a.so" bytes read 10 written 0',
        ]
    )
    assert opened_for_reading(log) == ['/usr/lib/with "quotes".py', "/usr/lib/a.so"]


def test_a_manifest_survives_the_wire_and_bad_ones_are_refused() -> None:
    entry = CacheEntry("/opt/env/x.py", "f", 3, 10**9, 2 * 10**9, 7, 0o100644, 1, 1)
    manifest = CacheManifest(("/opt/env",), (entry,), 123, "/var/log/opened")
    again = CacheManifest.from_json(manifest.to_json())
    assert again == manifest
    for tree in ("/", "relative", "/a/../b", "/a:b", "/a,b"):
        assert not valid_tree(tree)
        with pytest.raises(RequestError):
            CacheManifest.from_json({**manifest.to_json(), "trees": [tree]})
    with pytest.raises(RequestError, match="packed"):
        CacheManifest.from_json({**manifest.to_json(), "entries": "not base64 zlib"})
    bad = CacheManifest(("/opt/env",), (CacheEntry("/opt/../etc", "f", 0, 0, 0, 0, 0, 0, 0),), 1)
    with pytest.raises(RequestError, match="normalised"):
        CacheManifest.from_json(bad.to_json())


def _tree(tmp_path: Path) -> Path:
    env = tmp_path / "env"
    (env / "pkg" / "sub").mkdir(parents=True)
    (env / "pkg" / "a.py").write_text("a")
    (env / "pkg" / "b.py").write_text("b")
    (env / "pkg" / "sub" / "c.py").write_text("c")
    (env / "pkg" / "link").symlink_to("a.py")
    (env / "other").mkdir()
    (env / "other" / "big.bin").write_bytes(b"\0" * 10)
    return env


def test_a_manifest_brings_whole_directories_and_never_names_what_it_must_not(
    tmp_path: Path,
) -> None:
    env = _tree(tmp_path)
    hot = [str(env / "pkg" / "a.py"), str(env / "pkg" / "sub" / "c.py"), "/elsewhere/x"]
    manifest = take_manifest(hot, [str(env)], [str(env / "pkg" / "sub")])
    by_path = {e.path: e for e in manifest.entries}
    assert by_path[str(env / "pkg" / "b.py")].kind == "f"  # a neighbour comes along
    assert by_path[str(env / "pkg" / "link")].target == "a.py"
    assert str(env / "pkg" / "sub" / "c.py") not in by_path  # never cached
    assert not by_path[str(env / "pkg")].whole  # it lacks what lies under never
    assert not by_path[str(env)].whole  # 'other' was not read: not listed whole
    assert "/elsewhere/x" not in by_path
    manifest = take_manifest([str(env / "pkg" / "sub" / "c.py")], [str(env / "pkg")], [])
    by_path = {e.path: e for e in manifest.entries}
    assert by_path[str(env / "pkg" / "sub")].whole
    # no module was read from pkg itself: it is not listed whole (b.py stays out)
    assert not by_path[str(env / "pkg")].whole
    assert str(env / "pkg" / "b.py") not in by_path
    read = [str(env / "pkg" / "sub" / "c.py"), str(env / "pkg" / "a.py")]
    manifest = take_manifest(read, [str(env / "pkg")], [])
    assert {e.path: e for e in manifest.entries}[str(env / "pkg")].whole
    manifest = take_manifest([str(env / "pkg" / "a.py")], [str(env / "pkg")], [])
    by_path = {e.path: e for e in manifest.entries}
    assert not by_path[str(env / "pkg")].whole  # sub was never listed


def test_a_hot_set_keeps_the_most_recent_paths(tmp_path: Path) -> None:
    hot = HotSets(tmp_path / "hot", most=3)
    hot.record(1000, ["/a", "/b"])
    hot.record(1000, ["/c", "/a", "/d"])
    assert hot.load(1000) == ["/b", "/c", "/a", "/d"][-3:]
    assert hot.load(1001) == []
    assert oct((tmp_path / "hot").stat().st_mode & 0o777) == "0o700"
    assert hot.forget(1000) and hot.load(1000) == []


def _entry(path: Path, **change: int) -> CacheEntry:
    st = os.lstat(path)
    fields = {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino,
        "mode": st.st_mode,
        "uid": st.st_uid,
        "gid": st.st_gid,
        **change,
    }
    return CacheEntry(str(path), "f", **fields)


def test_a_copy_made_before_any_manifest_holds_only_for_a_file_unchanged_since(
    tmp_path: Path,
) -> None:
    source = tmp_path / "src.py"
    source.write_text("one")
    os.chmod(source, 0o4755)  # set-uid: the copy must not keep it
    counted: list[int] = []
    store = UserStore(tmp_path / "store", counted.append)
    after_change = time.time_ns() + 10**9  # the session began after the file last changed
    store.put(str(source), os.open(source, os.O_RDONLY), after_change, threading.Event())
    obj = store.object_path(str(source))
    assert obj.read_text() == "one" and obj.stat().st_mode & 0o7777 == 0o755
    assert sum(counted) == 3
    entry = _entry(source)
    assert store.valid(_entry(source, size=4)) is None
    assert store.valid(entry) == obj  # and now its key is the manifest's
    assert store.valid(_entry(source, ctime_ns=entry.ctime_ns + 1)) is None  # the key decides
    # a file that changed after the session began: the copy may be of either version
    store.put(str(source), os.open(source, os.O_RDONLY), entry.ctime_ns, threading.Event())
    assert store.valid(entry) is None
    store.save()
    orphan = store.objects / ("0" * 64)  # copied after the last save, by an agent then killed
    orphan.write_text("?")
    reloaded = UserStore(tmp_path / "store", lambda n: None)
    assert reloaded.records.keys() == {str(source)}
    assert not orphan.exists()


def test_eviction_drops_the_least_recently_used_and_never_what_a_view_links(
    tmp_path: Path,
) -> None:
    cache = NodeCache(max_bytes=250)
    cache.open(tmp_path)
    store = cache._store("someone")
    stop = threading.Event()
    paths = []
    for n in range(3):
        source = tmp_path / f"f{n}"
        source.write_bytes(bytes(100))
        store.put(str(source), os.open(source, os.O_RDONLY), 0, stop)
        store.records[str(source)].used = n  # f0 the least recently used
        paths.append(str(source))
    os.link(store.object_path(paths[0]), tmp_path / "view-link")  # a live view holds f0
    assert cache.size() == 300
    assert cache.evict() == 100
    assert set(store.records) == {paths[0], paths[2]}
    assert cache.size() == 200


@root_only
def test_a_view_links_valid_copies_and_hides_the_share_only_under_whole_directories(
    tmp_path: Path,
) -> None:
    env = _tree(tmp_path)
    (env / "pkg" / "sub" / "c.py").unlink()
    (env / "pkg" / "sub").rmdir()
    store = UserStore(tmp_path / "store", lambda n: None)
    for name in ("a.py", "b.py"):
        path = env / "pkg" / name
        store.put(str(path), os.open(path, os.O_RDONLY), time.time_ns() + 10**9, threading.Event())
    manifest = take_manifest([str(env / "pkg" / "a.py")], [str(env)], [])
    view = tmp_path / "view"
    view.mkdir()
    stats = build_view(store, manifest, str(env), view, never=[])
    assert (stats.files, stats.hits, stats.missing) == (2, 2, [])
    linked = store.object_path(str(env / "pkg" / "a.py"))
    assert (view / "pkg" / "a.py").stat().st_ino == linked.stat().st_ino
    assert os.readlink(view / "pkg" / "link") == "a.py"
    assert os.getxattr(view / "pkg", OPAQUE) == b"y"  # whole, and every file is linked
    assert OPAQUE not in os.listxattr(view)  # 'other' was not listed: the share shows it
    # a file changed since: not linked, and its directory no longer hides the share's
    (env / "pkg" / "b.py").write_text("B")
    manifest = take_manifest([str(env / "pkg" / "a.py")], [str(env)], [])
    view2 = tmp_path / "view2"
    view2.mkdir()
    stats = build_view(store, manifest, str(env), view2, never=[])
    assert [e.path for e in stats.missing] == [str(env / "pkg" / "b.py")]
    assert not (view2 / "pkg" / "b.py").exists()
    assert OPAQUE not in os.listxattr(view2 / "pkg")
    # never-cached paths stay out, whatever the manifest says
    view3 = tmp_path / "view3"
    view3.mkdir()
    build_view(store, manifest, str(env), view3, never=[str(env / "pkg" / "a.py")])
    assert not (view3 / "pkg" / "a.py").exists()


def test_the_trees_a_run_caches() -> None:
    tmp_path = Path(tempfile.mkdtemp(dir="/var/tmp"))  # not /tmp: a run's /tmp is its own
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    python = venv / "bin" / "python"
    python.symlink_to(sys.executable)
    work = tmp_path / "work"
    work.mkdir()
    assert cache_trees([str(python)], {}, str(work)) == ["/usr", str(venv)]
    assert cache_trees(["sh"], {"PATH": "/usr/bin:/bin"}, str(work)) == ["/usr"]
    # never the tree the run works in: it must be able to write there
    assert cache_trees([str(python)], {}, str(venv / "bin")) == ["/usr"]
    given = {"HWSCHED_CACHE_TREES": f"{venv}:/nonexistent:/"}
    assert cache_trees(["sh"], given, str(work)) == [str(venv)]
    assert cache_trees(["sh"], {"HWSCHED_CACHE_TREES": ""}, str(work)) == []
    shutil.rmtree(tmp_path)


def test_nothing_is_read_through_a_link_of_the_developers(tmp_path: Path) -> None:
    """The share shows links as they are; followed on the node they would reach its files."""
    share = tmp_path / "share"
    (share / "opt" / "env").mkdir(parents=True)
    (share / "opt" / "env" / "ok.py").write_text("ok")
    (share / "opt" / "env" / "escape").symlink_to("/etc")
    (share / "opt" / "env" / "passwd").symlink_to("/etc/passwd")
    fd = open_beneath(share, "/opt/env/ok.py")
    assert os.read(fd, 10) == b"ok"
    os.close(fd)
    for path in ("/opt/env/escape/passwd", "/opt/env/passwd"):
        with pytest.raises(OutsideShare):
            open_beneath(share, path)
    for path in ("/opt/env/../../../etc/passwd", "opt/env/ok.py"):
        with pytest.raises(OutsideShare, match="normalised"):
            open_beneath(share, path)


@root_only
def test_a_manifest_cannot_make_a_view_write_outside_it(tmp_path: Path) -> None:
    victim = tmp_path / "node-dir"
    victim.mkdir()
    store = UserStore(tmp_path / "store", lambda n: None)
    source = tmp_path / "x"
    source.write_text("x")
    store.put("/t/a/x", os.open(source, os.O_RDONLY), time.time_ns() + 10**9, threading.Event())
    st = os.stat(source)
    entries = (
        CacheEntry("/t", "d", 0, 0, 0, 1, 0o40755, 0, 0),
        CacheEntry("/t/a", "l", 0, 0, 0, 2, 0o120777, 0, 0, target=str(victim)),
        CacheEntry("/t/a", "d", 0, 0, 0, 3, 0o40777, 0, 0),  # the same path again, as a dir
        CacheEntry("/t/a/x", "f", 1, st.st_mtime_ns, 1, 4, 0o100644, 0, 0),
    )
    view = tmp_path / "view"
    view.mkdir()
    build_view(store, CacheManifest(("/t",), entries, 1), "/t", view, never=[])
    assert os.listdir(victim) == []
    assert oct(victim.stat().st_mode & 0o777) == "0o755"
    assert os.readlink(view / "a") == str(victim)
