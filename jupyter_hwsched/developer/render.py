"""The pool as a readable table, for ``hwsched status`` and ``%hwstatus``."""

from __future__ import annotations

import time
from typing import Any

from jupyter_hwsched.protocol.request import format_memory


def _ago(since: float | None, now: float) -> str:
    if not since:
        return "-"
    secs = int(now - since)
    if secs < 60:
        return f"{secs}s"
    if secs < 3600:
        return f"{secs // 60}m"
    return f"{secs // 3600}h{(secs % 3600) // 60:02d}m"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _memory(gpu: dict[str, Any]) -> str:
    """Total memory, with the part in use where the node reports it: ``12G/80G``."""
    total = format_memory(int(gpu["memory"]))
    used = gpu.get("memory_used")
    if used is None:
        return total
    gib = int(used) / 1024**3
    return (f"{gib:.1f}G" if gib >= 1 else f"{round(int(used) / 1024**2)}M") + f"/{total}"


def _holder(gpu: dict[str, Any]) -> str:
    """Who holds a GPU; for one that resident kernels share, how many and how much."""
    tenants = gpu.get("shared_by") or []
    if not tenants:
        return str(gpu.get("holder") or "free")
    promised = sum(int(t.get("gpu_mem") or 0) for t in tenants)
    return f"{gpu.get('holder')} (shared by {len(tenants)}, {format_memory(promised)} promised)"


def render_pool(pool: dict[str, Any], me: str | None = None) -> str:
    now = float(pool.get("time") or time.time())
    rows = [["NODE", "GPU", "MODEL", "MEMORY", "UTIL", "HELD BY", "SESSION", "FOR"]]
    simulated = False
    for node in pool["nodes"]:
        labels = f" [{','.join(node['labels'])}]" if node.get("labels") else ""
        name = node["name"] + labels + ("" if node["up"] else " (down)")
        for gpu in node["gpus"]:
            simulated |= bool(gpu.get("simulated"))
            model = gpu["model"] + (" [simulated]" if gpu.get("simulated") else "")
            util = gpu.get("utilization")
            rows.append(
                [
                    name,
                    str(gpu["index"]),
                    model,
                    _memory(gpu),
                    "-" if util is None else f"{util:.0f}%",
                    _holder(gpu),
                    gpu.get("session") or "-",
                    _ago(gpu.get("since"), now),
                ]
            )
    lines = [_table(rows) if len(rows) > 1 else "no GPU node is registered"]
    if simulated:
        lines.append("[simulated]: no real GPU; NVML found none on that node")
    queue = pool.get("queue") or []
    lines.append("")
    by_slurm = (
        " (placed by Slurm: squeue shows the same jobs)" if pool.get("placement") == "slurm" else ""
    )
    lines.append((f"queue: {len(queue)} waiting" if queue else "queue: empty") + by_slurm)
    for place, item in enumerate(queue, 1):
        request = item["request"]
        mine = " (you)" if me and item["user"] == me else ""
        eta = item.get("estimated_start")
        expect = f"; expected to start in {_ago(now, eta)}" if eta and eta > now else ""
        position = item.get("position") or place
        lines.append(
            f"  {position}. {item['user']}{mine} wants {request['gpus']} GPU(s), "
            f"waiting {_ago(item['created'], now)}: {item.get('waiting_for', '')}{expect}"
        )
    leases = [(n["name"], lease) for n in pool["nodes"] for lease in n.get("warm_leases") or []]
    if leases:
        lines.append("")
        lines.append("kept warm between sessions (a container and its share's mount, no GPU):")
    for node, lease in leases:
        mine = " (you)" if me and lease["user"] == me else ""
        kernel = "kernel ready" if lease["kernel"] else "no kernel"
        if lease["in_use"]:
            state = f"in use by session {lease['in_use']}"
        else:
            state = f"ends in {_ago(now, lease['expires'])} unless used"
        lines.append(
            f"  {lease['id']} on {node}: {lease['user']}@{lease['host']}{mine}, {kernel}, {state}"
        )
    if me:
        mine_held = [
            (n["name"], g) for n in pool["nodes"] for g in n["gpus"] if g.get("holder") == me
        ]
        lines.append("")
        lines.append(
            "your sessions: "
            + (", ".join(f"{g['session']} on {n} GPU {g['index']}" for n, g in mine_held) or "none")
        )
    return "\n".join(lines)


def render_usage(report: dict[str, Any]) -> str:
    rows = [["USER", "SESSIONS", "GPU-HOURS", "BUSY GPU-HOURS", "BUSY", "WAITED"]]
    for user in report["users"]:
        fraction = user.get("busy_fraction")
        rows.append(
            [
                user["user"],
                str(user["sessions"]),
                f"{user['gpu_seconds_allocated'] / 3600:.2f}",
                f"{user['gpu_seconds_busy'] / 3600:.2f}",
                "-" if fraction is None else f"{100 * fraction:.0f}%",
                f"{user['wait_seconds']:.0f}s",
            ]
        )
    if len(rows) == 1:
        return "no sessions in the window"
    return _table(rows)
