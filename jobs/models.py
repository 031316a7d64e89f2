"""`imagegen models list|show|promote|rollback --root DIR [--json]`: the nightly loop's model registry (jobs/registry.py).

  imagegen models list --root /data/nightly               versions, their status and headline metrics; * = current
  imagegen models show v0003 --root /data/nightly --json   one version's full record
  imagegen models promote v0002 --root /data/nightly      make v0002 current (by hand)
  imagegen models rollback --root /data/nightly           back to the version promoted before the current one
"""
from __future__ import annotations

import json
import sys

from jobs.registry import Registry, RegistryError
from jobs.cliutil import Parser


def headline(metrics: dict) -> str:
    """The numbers a promotion is decided on, as text."""
    m = (metrics or {}).get("metrics", {})
    parts = []
    if "fid" in m:
        parts.append(f"FID {m['fid']['value']:.3g} (floor {m['fid']['real_floor']:.3g})")
    if "recall" in m:
        parts.append(f"recall {m['recall']['value']:.3f}")
    if "conditional" in (metrics or {}):
        parts.append(f"class acc {metrics['conditional']['class_accuracy']['value']:.3f}")
    if "vae" in (metrics or {}):
        parts.append(f"ELBO {metrics['vae']['elbo_nats']:.1f} nats")
    return ", ".join(parts) or "no metrics"


def main(argv: list[str]) -> int:
    p = Parser(prog="imagegen models", description=__doc__)
    p.add_argument("action", choices=["list", "show", "promote", "rollback"])
    p.add_argument("version", nargs="?", help="show / promote: the version (e.g. v0003)")
    p.add_argument("--root", required=True, help="the nightly root (holds registry/)")
    p.add_argument("--json", action="store_true")
    ns = p.parse_args(argv)
    reg = Registry.at(ns.root)
    try:
        if ns.action in ("show", "promote") and not ns.version:
            raise RegistryError(f"`imagegen models {ns.action}` needs a VERSION (see `imagegen models list --root {ns.root}`)")
        if ns.action == "list":
            rows = reg.versions()
            try:
                current = reg.current()
            except RegistryError as e:  # named, and the versions are still listed
                current = None
                print(f"imagegen models: {e}", file=sys.stderr)
            if ns.json:
                print(json.dumps({"current": current, "versions": rows}, indent=2, sort_keys=True))
            elif not rows:
                print(f"no versions in {reg.root}")
            for r in [] if ns.json else rows:
                mark = "*" if r["version"] == current else " "
                print(f"{mark} {r['version']}  {r['status']:<9}  night {r.get('night') or '-':<10}  "
                      f"data {r['manifest_id']}  code {r['code_version']}  {r.get('error') or headline(r['metrics'])}")
        elif ns.action == "show":
            r = reg.get(ns.version)
            print(json.dumps(r, indent=2, sort_keys=True) if ns.json else
                  "\n".join(f"{k}: {v if k != 'metrics' else headline(v)}" for k, v in sorted(r.items()) if k != "config"))
        elif ns.action == "promote":
            reg.promote(ns.version, reason="promoted by hand (imagegen models promote)")
            print(f"{ns.version} is now current in {reg.root}")
        else:
            back = reg.rollback()
            print(f"rolled back: {back} is now current in {reg.root}")
    except RegistryError as e:
        print(f"imagegen models: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
