#!/usr/bin/env python3
"""Check every resource and data source in .tf files against the provider schema.

`terraform validate` would do this, but it needs the Google provider binary,
which cannot be downloaded here. This reads the same schema from the cache
provider_schema.py builds (provider 6.50.0) and reports, one line each:

* an unknown resource type or data source;
* an unknown argument or block, at any nesting level (also inside
  `dynamic "x" { content { ... } }`, checked as block x);
* an argument written as a block or a block written as an argument;
* a block the schema allows once, written more than once;
* a missing required argument or block, at every level of the blocks present.

Meta-arguments (count, for_each, depends_on, provider, lifecycle, and
provisioner/connection on resources) are understood; `module` calls are not
resources and are skipped; `provider "google"` blocks are checked too.

Usage: validate_schema.py [--schema CACHE] PATH...   (files or folders; folders
are searched recursively for *.tf, skipping .terraform/)
Exit status: 0 clean, 1 problems found, 2 nothing to check or unparsable input.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import hcl2

import provider_schema

HCL_OPTIONS = hcl2.SerializationOptions(with_comments=False, strip_string_quotes=True, explicit_blocks=True)
BLOCK_MARK = "__is_block__"

# Terraform's own arguments, valid on every resource (data sources: no
# provisioner/connection). Their values are not the provider's business.
META_ARGS = {"count", "for_each", "depends_on", "provider"}
RESOURCE_ONLY_META_BLOCKS = {"provisioner", "connection"}
CONDITION = {"r": 0, "m": 1, "s": {"a": {"condition": 1, "error_message": 1}}}
LIFECYCLE = {
    "resource": {"a": {"create_before_destroy": 0, "prevent_destroy": 0, "ignore_changes": 0,
                       "replace_triggered_by": 0},
                 "b": {"precondition": CONDITION, "postcondition": CONDITION}},
    "data": {"a": {}, "b": {"precondition": CONDITION, "postcondition": CONDITION}},
}
DYNAMIC = {"a": {"for_each": 1, "iterator": 0, "labels": 0}}
# Built into Terraform, not in any provider.
BUILTIN = {"resource": {"terraform_data": {"a": {"input": 0, "triggers_replace": 0}}}, "data": {}}


@dataclass
class Checker:
    """Walks parsed files against the schema, collecting problems and counts."""

    schema: dict
    problems: list[str] = field(default_factory=list)
    resources: int = 0
    arguments: int = 0

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    # --- one body against one schema node ---------------------------------

    def check_body(self, body: dict, node: dict, path: str, where: str) -> None:
        """Every key of body must be in node; node's required ones must be in body."""
        present = set()
        for key, value in body.items():
            if key.startswith("__"):
                continue
            if key == "dynamic" and is_labelled_blocks(value):
                present |= self.check_dynamics(value, node, path, where)
                continue
            present.add(key)
            if is_blocks(value):
                self.check_block(key, value, node, path, where)
            else:
                self.check_argument(key, node, path, where)
        for name, required in node.get("a", {}).items():
            if required and name not in present:
                self.problem(where, f'missing required argument "{path}{name}"')
        for name, spec in node.get("b", {}).items():
            if spec["r"] and name not in present:
                self.problem(where, f'missing required block "{path}{name}"')

    def check_argument(self, key: str, node: dict, path: str, where: str) -> None:
        self.arguments += 1
        if key in node.get("a", {}):
            return
        if key in node.get("b", {}):
            self.problem(where, f'"{path}{key}" is a block, not an argument: write {key} {{ ... }}')
        else:
            self.problem(where, f'unknown argument "{path}{key}"')

    def check_block(self, key: str, instances: list, node: dict, path: str, where: str) -> None:
        spec = node.get("b", {}).get(key)
        if spec is None:
            if key in node.get("a", {}):
                self.problem(where, f'"{path}{key}" is an argument, not a block: write {key} = ...')
            else:
                self.problem(where, f'unknown block "{path}{key}"')
            return
        if len(instances) > 1 and not spec["m"]:
            self.problem(where, f'block "{path}{key}" may appear at most once, found {len(instances)}')
        for i, inst in enumerate(instances):
            index = f"[{i}]" if spec["m"] else ""
            self.check_body(inst, spec["s"], f"{path}{key}{index}.", where)

    def check_dynamics(self, dynamics: list, node: dict, path: str, where: str) -> set:
        """`dynamic "x" { for_each ...; content { ... } }`: content is checked as block x."""
        names = set()
        for dyn in dynamics:
            for label, body in dyn.items():
                if label.startswith("__"):
                    continue
                names.add(label)
                spec = node.get("b", {}).get(label)
                if spec is None:
                    self.problem(where, f'unknown block "{path}{label}" (in a dynamic block)')
                    continue
                content = body.get("content")
                shell = {k: v for k, v in body.items() if k != "content"}
                self.check_body(shell, DYNAMIC, f'{path}dynamic "{label}".', where)
                if not is_blocks(content) or len(content) != 1:
                    self.problem(where, f'dynamic "{path}{label}" needs exactly one content block')
                    continue
                self.check_body(content[0], spec["s"], f"{path}{label}[dynamic].", where)
        return names

    # --- top-level blocks -------------------------------------------------

    def check_resource(self, kind: str, rtype: str, body: dict, where: str) -> None:
        """One resource (kind "resource") or data source (kind "data")."""
        self.resources += 1
        node = self.schema[kind].get(rtype) or BUILTIN[kind].get(rtype)
        if node is None:
            label = "data source" if kind == "data" else "resource type"
            self.problem(where, f'unknown {label} "{rtype}"')
            return
        if "count" in body and "for_each" in body:
            self.problem(where, '"count" and "for_each" are mutually exclusive')
        own = {}
        for key, value in body.items():
            if key in META_ARGS:
                continue
            if key == "lifecycle" and is_blocks(value):
                for inst in value:
                    self.check_body(inst, LIFECYCLE[kind], "lifecycle.", where)
            elif kind == "resource" and key in RESOURCE_ONLY_META_BLOCKS and (
                    is_blocks(value) or is_labelled_blocks(value)):
                continue  # provisioners run outside the provider
            else:
                own[key] = value
        self.check_body(own, node, "", where)

    def check_file(self, path: Path, display: str) -> None:
        text = path.read_text(encoding="utf-8")
        try:
            doc = hcl2.loads(text, serialization_options=HCL_OPTIONS)
        except Exception as exc:  # python-hcl2 raises lark errors of many kinds
            self.problem(display, f"cannot parse: {str(exc).splitlines()[0]}")
            return
        for kind in ("resource", "data"):
            for entry in doc.get(kind, []):
                for rtype, named in entry.items():
                    for name, body in named.items():
                        if name.startswith("__"):
                            continue
                        address = f"{'data.' if kind == 'data' else ''}{rtype}.{name}"
                        line = block_line(text, kind, rtype, name)
                        self.check_resource(kind, rtype, body, f"{display}:{line}: {address}")
        for entry in doc.get("provider", []):
            for pname, body in entry.items():
                if pname in ("google", "google-beta"):
                    where = f"{display}:{block_line(text, 'provider', pname)}: provider.{pname}"
                    self.check_body(body, self.schema["provider"], "", where)


def is_blocks(value) -> bool:
    """python-hcl2 gives blocks as lists of dicts marked __is_block__."""
    return isinstance(value, list) and bool(value) and all(
        isinstance(v, dict) and v.get(BLOCK_MARK) for v in value)


def is_labelled_blocks(value) -> bool:
    """`dynamic "x" {}` or `provisioner "local-exec" {}` comes as
    [{"x": {..., __is_block__}}] (the label level is unmarked)."""
    return isinstance(value, list) and bool(value) and all(
        isinstance(v, dict) and all(isinstance(b, dict) and b.get(BLOCK_MARK)
                                    for k, b in v.items() if not k.startswith("__"))
        for v in value)


def block_line(text: str, *labels: str) -> int:
    """Line of `kind "label" "label" {` in text (python-hcl2 does not give it)."""
    kind, rest = labels[0], labels[1:]
    pattern = r"^\s*" + re.escape(kind) + "".join(r'\s+"' + re.escape(x) + '"' for x in rest) + r"\s*\{"
    match = re.search(pattern, text, re.MULTILINE)
    return text.count("\n", 0, match.start()) + 1 if match else 0


def tf_files(paths: list[Path]) -> list[Path]:
    """The .tf files under paths, in a stable order, without .terraform/."""
    found = []
    for path in paths:
        if path.is_dir():
            found += [p for p in sorted(path.rglob("*.tf")) if ".terraform" not in p.parts]
        elif path.suffix == ".tf":
            found.append(path)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schema", type=Path, default=provider_schema.DEFAULT_CACHE)
    parser.add_argument("paths", nargs="+", type=Path)
    opts = parser.parse_args(argv)
    files = tf_files(opts.paths)
    if not files:
        print(f"validate_schema: no .tf files under {' '.join(map(str, opts.paths))}", file=sys.stderr)
        return 2
    schema = provider_schema.load(opts.schema)
    checker = Checker(schema)
    for path in files:
        checker.check_file(path, display_path(path))
    for line in checker.problems:
        print(line)
    print(f"schema ({schema['package']}, google provider {schema['provider_version']}): "
          f"{len(files)} files, {checker.resources} resources and data sources, "
          f"{checker.arguments} arguments checked, {len(checker.problems)} problems")
    if checker.resources == 0:
        print("validate_schema: no resource or data source found: nothing was checked", file=sys.stderr)
        return 2
    return 1 if checker.problems else 0


def display_path(path: Path) -> str:
    """Paths relative to the current folder where possible, for short messages."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
