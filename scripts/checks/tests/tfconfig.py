"""Read a Terraform folder with python-hcl2 and evaluate simple expressions.

test_terraform.py asserts facts about the real module without Terraform or
the provider, so it needs: the resources, variables and locals of a folder,
references to locals followed to what they stand for, and the value of
simple expressions (a `count`, a variable's validation condition) for given
variable values. The evaluator covers literals, var./local. references,
arithmetic, comparisons, && || !, ?:, parentheses, list literals and a few
functions; anything else raises Unsupported, so a test can fall back to a
weaker textual check instead of guessing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import hcl2

HCL_OPTIONS = hcl2.SerializationOptions(with_comments=False, strip_string_quotes=True)
META = "__"


def clean(value):
    """Drop python-hcl2's __is_block__ markers, recursively."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items() if not k.startswith(META)}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


@dataclass
class Config:
    """The top-level blocks of every .tf file in one folder (not recursive)."""

    folder: Path
    resources: dict[str, dict] = field(default_factory=dict)   # "type.name" -> body
    data: dict[str, dict] = field(default_factory=dict)        # "type.name" -> body
    variables: dict[str, dict] = field(default_factory=dict)   # name -> body
    locals: dict[str, object] = field(default_factory=dict)    # name -> value
    files: dict[str, str] = field(default_factory=dict)        # "type.name" / "var.x" -> file

    @classmethod
    def load(cls, folder: Path) -> "Config":
        config = cls(folder)
        for path in sorted(folder.glob("*.tf")):
            doc = hcl2.loads(path.read_text(encoding="utf-8"), serialization_options=HCL_OPTIONS)
            for kind, target in (("resource", config.resources), ("data", config.data)):
                for entry in doc.get(kind, []):
                    for rtype, named in clean(entry).items():
                        for name, body in named.items():
                            target[f"{rtype}.{name}"] = body
                            config.files[f"{rtype}.{name}"] = path.name
            for entry in doc.get("variable", []):
                for name, body in clean(entry).items():
                    config.variables[name] = body
                    config.files[f"var.{name}"] = path.name
            for entry in doc.get("locals", []):
                config.locals.update(clean(entry))
        return config

    def expand(self, value, depth: int = 0) -> str:
        """A value as text with every local.X replaced by (its expression), so a
        test can look for what a reference finally stands for."""
        text = value if isinstance(value, str) else repr(value)
        if depth > 10:
            return text

        def sub(match):
            local = self.locals.get(match.group(1))
            return "(" + self.expand(local, depth + 1) + ")" if local is not None else match.group(0)

        return re.sub(r"\blocal\.(\w+)", sub, text)

    def default(self, name: str):
        return self.variables[name].get("default")


def load_tfvars(path: Path) -> dict:
    """A .tfvars file (HCL attributes only)."""
    return clean(hcl2.loads(path.read_text(encoding="utf-8"), serialization_options=HCL_OPTIONS))


# --- a small evaluator -----------------------------------------------------

class Unsupported(Exception):
    """The expression uses something the evaluator does not cover."""


TOKEN = re.compile(r"""\s*(?:
    (?P<num>\d+(?:\.\d+)?)
  | (?P<str>"(?:[^"\\$]|\\.)*")
  | (?P<ref>[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*)
  | (?P<op>==|!=|<=|>=|&&|\|\||[-+*/%<>!?:(),\[\]])
)""", re.VERBOSE)

BINARY = {  # operator: (precedence, function)
    "||": (1, lambda a, b: a or b), "&&": (2, lambda a, b: a and b),
    "==": (3, lambda a, b: a == b), "!=": (3, lambda a, b: a != b),
    "<": (4, lambda a, b: a < b), "<=": (4, lambda a, b: a <= b),
    ">": (4, lambda a, b: a > b), ">=": (4, lambda a, b: a >= b),
    "+": (5, lambda a, b: a + b), "-": (5, lambda a, b: a - b),
    "*": (6, lambda a, b: a * b), "/": (6, lambda a, b: a / b), "%": (6, lambda a, b: a % b),
}
FUNCTIONS = {
    "contains": lambda seq, x: x in seq, "length": len, "min": min, "max": max, "abs": abs,
    "tostring": str, "tonumber": float,
}


def tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise Unsupported(f"cannot read {text[pos:]!r}")
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


def unwrap(expr) -> str:
    """`${x}` -> `x` (python-hcl2 wraps expressions); other strings are literals."""
    if not isinstance(expr, str):
        return repr(expr).lower() if isinstance(expr, bool) else str(expr)
    if expr.startswith("${") and expr.endswith("}") and expr.count("${") == 1:
        return expr[2:-1]
    if "${" in expr:
        raise Unsupported(f"string template {expr!r}")
    return '"' + expr + '"'


class Evaluator:
    """Evaluate one expression with var.* from `variables` and local.* from `config`."""

    def __init__(self, variables: dict, config: Config | None = None):
        self.variables = variables
        self.config = config
        # >0 while reading the branch of a ?: that was not chosen: like
        # Terraform, its errors do not count, so nothing is computed there.
        self.skipping = 0

    def eval(self, expr) -> object:
        self.tokens = tokenize(unwrap(expr))
        self.pos = 0
        value = self.expression(0)
        if self.pos != len(self.tokens):
            raise Unsupported(f"trailing {self.tokens[self.pos:]}")
        return value

    def peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ("end", "")

    def take(self, expected: str | None = None):
        token = self.peek()
        if expected is not None and token[1] != expected:
            raise Unsupported(f"expected {expected!r}, got {token[1]!r}")
        self.pos += 1
        return token

    def expression(self, min_prec: int):
        left = self.unary()
        while True:
            kind, op = self.peek()
            if kind == "op" and op == "?" and min_prec == 0:
                self.take()
                chosen = bool(left)
                yes = self.branch(chosen)
                self.take(":")
                no = self.branch(not chosen)
                left = yes if chosen else no
                continue
            if kind != "op" or op not in BINARY or BINARY[op][0] < min_prec:
                return left
            self.take()
            right = self.expression(BINARY[op][0] + 1)
            left = None if self.skipping else BINARY[op][1](left, right)

    def branch(self, chosen: bool):
        """One result of a ?:, evaluated only if chosen."""
        self.skipping += 0 if chosen else 1
        try:
            return self.expression(0)
        finally:
            self.skipping -= 0 if chosen else 1

    def unary(self):
        kind, tok = self.peek()
        if kind == "op" and tok in ("!", "-"):
            self.take()
            value = self.unary()
            if self.skipping:
                return None
            return (not value) if tok == "!" else -value
        return self.primary()

    def primary(self):
        kind, tok = self.take()
        if kind == "num":
            return float(tok) if "." in tok else int(tok)
        if kind == "str":
            return bytes(tok[1:-1], "utf-8").decode("unicode_escape")
        if kind == "op" and tok == "(":
            value = self.expression(0)
            self.take(")")
            return value
        if kind == "op" and tok == "[":
            items = []
            while self.peek()[1] != "]":
                items.append(self.expression(0))
                if self.peek()[1] == ",":
                    self.take()
            self.take("]")
            return items
        if kind == "ref":
            return self.reference(tok)
        raise Unsupported(f"unexpected {tok!r}")

    def reference(self, name: str):
        if self.skipping and self.peek()[1] != "(":
            return None
        if name in ("true", "false"):
            return name == "true"
        if name == "null":
            return None
        if self.peek()[1] == "(":
            return self.call(name)
        if name.startswith("var."):
            if name[4:] not in self.variables:
                raise Unsupported(f"no value given for {name}")
            return self.variables[name[4:]]
        if name.startswith("local.") and self.config and name[6:] in self.config.locals:
            local = self.config.locals[name[6:]]
            if not isinstance(local, str):
                return local  # a literal list, map, number or bool
            return Evaluator(self.variables, self.config).eval(local)
        raise Unsupported(f"reference {name}")

    def call(self, name: str):
        if name not in FUNCTIONS:
            raise Unsupported(f"function {name}()")
        self.take("(")
        args = []
        while self.peek()[1] != ")":
            args.append(self.expression(0))
            if self.peek()[1] == ",":
                self.take()
        self.take(")")
        return None if self.skipping else FUNCTIONS[name](*args)
