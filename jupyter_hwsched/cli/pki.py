"""``hwsched pki``: the operator's commands for the pool's certificate authority.

    hwsched pki init --dir DIR
    hwsched pki issue --dir DIR --role scheduler|node|machine|operator NAME [--address A ...]

``init`` makes the CA (kept if it exists); ``issue`` writes ``NAME.pem`` and ``NAME-key.pem``
(0600) into ``--out`` (default: DIR/issued). Hand each host its certificate, its key and the
CA's certificate (``ca.pem``), never the CA's key.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jupyter_hwsched.protocol.errors import HwschedError
from jupyter_hwsched.protocol.pki import CA_CERT, ROLES, init_ca, issue


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hwsched pki", description="The pool's certificate authority.")
    sub = p.add_subparsers(dest="command", required=True)
    make = sub.add_parser("init", help="make the pool CA in --dir")
    make.add_argument("--dir", required=True, type=Path, help="the CA's directory (keep it safe)")
    give = sub.add_parser("issue", help="issue a certificate to a host, a machine or an operator")
    give.add_argument("--dir", required=True, type=Path, help="the CA's directory")
    give.add_argument("--role", required=True, choices=ROLES)
    give.add_argument("--address", action="append", default=[], help="a name or IP it serves on")
    give.add_argument("--out", type=Path, help="where to write it (default: DIR/issued)")
    give.add_argument("name", help="the holder's name: a host name, node name or machine name")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "init":
            made = init_ca(args.dir)
            print(f"pool CA: {made.cert} (give this to every host); key: {made.key} (keep it)")
        else:
            if not (args.dir / CA_CERT).exists():
                print(f"hwsched pki: no CA in {args.dir}: run 'hwsched pki init' first")
                return 2
            out = args.out or args.dir / "issued"
            made = issue(args.dir, args.name, args.role, out, tuple(args.address))
            print(f"{args.role} {args.name}: certificate {made.cert}, key {made.key}")
    except (HwschedError, OSError, ValueError) as exc:
        print(f"hwsched pki: error: {exc}", file=sys.stderr)
        return 2
    return 0
