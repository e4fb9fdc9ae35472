#!/usr/bin/env python3
"""The Google provider's schema, read offline from the cdktf bindings.

`terraform providers schema -json` needs the provider binary, which cannot be
downloaded here. The npm package @cdktf/provider-google ships a `.jsii` file:
the type system cdktf generated from that very schema (provider 6.50.0 for
package 16.12.1). This module turns it into a compact JSON cache that
validate_schema.py checks the configuration against.

How cdktf encodes the Terraform schema in jsii:

* every resource / data source is a class whose `base` is
  `cdktf.TerraformResource` / `cdktf.TerraformDataSource`; its docs summary
  links to the registry page and names the type:
  "Represents a {@link https://registry.terraform.io/providers/hashicorp/google/6.50.0/docs/resources/pubsub_subscription google_pubsub_subscription}."
* its initializer's `config` parameter is an interface (`PubsubSubscriptionConfig`)
  whose properties are the settable arguments (computed-only attributes are not
  there; meta-arguments are inherited from cdktf.TerraformMetaArguments, not
  listed);
* property names are camelCase, but the docs of each property carry the real
  Terraform name in a link anchor (`...#ack_deadline_seconds PubsubSubscription#ack_deadline_seconds}`),
  which is authoritative: cdktf renames some (`build` -> `buildAttribute`,
  `geth_details` -> `fetchhDetails`, `detect_md5hash` -> `detectMd5Hash`);
* `optional: true` marks an optional argument; a property without it is required;
* a property whose type is a datatype interface (struct) is a nested block
  with at most one instance; a union of `cdktf.IResolvable` and an array of
  structs is a repeatable block; everything else (primitives, lists and maps
  of primitives) is an attribute.

Cache layout (one node per resource type and per nested block):
    {"a": {arg: 1 if required else 0},
     "b": {block: {"r": 1 if required, "m": 1 if repeatable, "s": node}}}
under {"resource": {type: node}, "data": {type: node}, "provider": node}.

Usage:
    provider_schema.py --jsii .tools/provider-google/.jsii --out .tools/provider-google/schema.json
    provider_schema.py --show google_pubsub_subscription     (prints one type from the cache)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DIR = ROOT / ".tools" / "provider-google"
DEFAULT_JSII = DEFAULT_DIR / ".jsii"
DEFAULT_CACHE = DEFAULT_DIR / "schema.json"
# Bump when the cache layout changes (install.sh rebuilds the cache whenever
# this file changes; load() refuses a cache of another format).
CACHE_FORMAT = 1

BASES = {"cdktf.TerraformResource": "resource", "cdktf.TerraformDataSource": "data",
         "cdktf.TerraformProvider": "provider"}
# "Represents a {@link https://.../google/6.50.0/docs/resources/x google_x}."
# (the provider class: "Represents a {@link https://.../google/6.50.0/docs google}.")
TYPE_LINK = re.compile(
    r"\{@link https://registry\.terraform\.io/providers/hashicorp/google/([\w.]+)/docs"
    r"(?:/(resources|data-sources)/\w+)? (google\w*)\}"
)
# "...#ack_deadline_seconds PubsubSubscription#ack_deadline_seconds}"
ARG_ANCHOR = re.compile(r"#(\w+) \w+#\w+\}")


def snake_case(camel: str) -> str:
    """Fallback Terraform name of a property whose docs carry no anchor."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", camel).lower()


def terraform_name(prop: dict) -> str:
    """The Terraform argument name of a jsii property, from its docs link."""
    match = ARG_ANCHOR.search(json.dumps(prop.get("docs", {})))
    return match.group(1) if match else snake_case(prop["name"])


def struct_of(ptype: dict, types: dict) -> tuple[str | None, bool]:
    """(struct fqn, repeatable) if the property type is a block, else (None, False)."""
    fqn = ptype.get("fqn")
    if fqn and types.get(fqn, {}).get("datatype"):
        return fqn, False
    for member in ptype.get("union", {}).get("types", []):
        elem = member.get("collection", {}).get("elementtype", {})
        efqn = elem.get("fqn")
        if member.get("collection", {}).get("kind") == "array" and efqn and types.get(efqn, {}).get("datatype"):
            return efqn, True
    return None, False


def node_of(fqn: str, types: dict, seen: tuple = ()) -> dict:
    """Arguments and nested blocks (recursively) of one config/struct interface."""
    if fqn in seen:  # never seen in practice; guards against a cyclic schema
        raise ValueError(f"cyclic struct {fqn} via {' > '.join(seen)}")
    args: dict[str, int] = {}
    blocks: dict[str, dict] = {}
    for prop in types[fqn].get("properties", []):
        name = terraform_name(prop)
        required = 0 if prop.get("optional") else 1
        sfqn, many = struct_of(prop["type"], types)
        if sfqn:
            blocks[name] = {"r": required, "m": int(many), "s": node_of(sfqn, types, seen + (fqn,))}
        else:
            args[name] = required
    node: dict = {"a": dict(sorted(args.items()))}
    if blocks:
        node["b"] = dict(sorted(blocks.items()))
    return node


def config_fqn(cls: dict) -> str:
    """The config interface a resource class is constructed with."""
    for param in cls.get("initializer", {}).get("parameters", []):
        if param["name"] == "config":
            return param["type"]["fqn"]
    raise ValueError(f"{cls['fqn']}: no config parameter")


def build(jsii_path: Path) -> dict:
    """Read the .jsii and return the cache dict (see the module docstring)."""
    with open(jsii_path, encoding="utf-8") as fh:
        assembly = json.load(fh)
    types = assembly["types"]
    out: dict = {"format": CACHE_FORMAT, "package": f"{assembly['name']}@{assembly['version']}",
                 "provider_version": None, "resource": {}, "data": {}}
    for cls in types.values():
        kind = BASES.get(cls.get("base", ""))
        if cls.get("kind") != "class" or not kind:
            continue
        match = TYPE_LINK.search(cls.get("docs", {}).get("summary", ""))
        if not match:
            raise ValueError(f"{cls['fqn']}: no registry link naming the Terraform type")
        version, section, tf_type = match.groups()
        if section != {"resource": "resources", "data": "data-sources", "provider": None}[kind]:
            raise ValueError(f"{cls['fqn']}: base {cls['base']} but docs link to {section}")
        out["provider_version"] = out["provider_version"] or version
        if kind == "provider":  # the `provider "google" {}` block
            out["provider"] = node_of(config_fqn(cls), types)
        else:
            out[kind][tf_type] = node_of(config_fqn(cls), types)
    out["resource"] = dict(sorted(out["resource"].items()))
    out["data"] = dict(sorted(out["data"].items()))
    return out


def load(path: Path = DEFAULT_CACHE) -> dict:
    """The cache written by install.sh; fails with the fix if absent or stale."""
    try:
        with open(path, encoding="utf-8") as fh:
            cache = json.load(fh)
    except FileNotFoundError:
        raise SystemExit(f"provider schema cache {path} missing: run scripts/checks/install.sh")
    if cache.get("format") != CACHE_FORMAT:
        raise SystemExit(f"provider schema cache {path} has format {cache.get('format')}, "
                         f"want {CACHE_FORMAT}: run scripts/checks/install.sh")
    return cache


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jsii", type=Path, default=DEFAULT_JSII)
    parser.add_argument("--out", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--show", metavar="TYPE",
                        help="print one resource type (data.TYPE: a data source; provider: the provider block)")
    opts = parser.parse_args()
    if opts.show:
        cache = load(opts.out)
        kind, _, name = opts.show.rpartition(".")
        node = cache["provider"] if name == "provider" else cache["data" if kind == "data" else "resource"][name]
        print(json.dumps(node, indent=1))
        return 0
    cache = build(opts.jsii)
    tmp = opts.out.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(cache, fh, separators=(",", ":"))
    os.replace(tmp, opts.out)
    print(f"{opts.out}: {cache['package']} = google provider {cache['provider_version']}: "
          f"{len(cache['resource'])} resource types, {len(cache['data'])} data sources, "
          f"{os.path.getsize(opts.out) // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
