"""Google's API descriptions (discovery documents), pinned, and the checks
that hold a JSON request or answer against them.

The documents ship in google-api-python-client (pinned in requirements.txt),
under googleapiclient/discovery_cache/documents/. A request is checked the
way Google's front end parses it: an unknown field, a value of another type,
a value outside an enum or a missing required parameter is refused there
with HTTP 400, so it is a defect here. An answer is checked the way
BigQuery writes it: a field it does not send, or sends with another type
(int64 as a JSON string, for one), is a defect of whoever made the answer.
"""

from dataclasses import dataclass
import importlib.util
import json
from pathlib import Path
import re
import urllib.parse

# Query parameters Google's front end takes on every method without the
# discovery document listing them: `$alt` is how the Google Cloud client
# libraries ask for JSON with enums as numbers or names.
SYSTEM_PARAMETERS = {"$alt", "$fields", "$prettyPrint", "$callback", "$userProject"}

INT_FORMATS = {"int64", "uint64"}
INTEGER_RE = re.compile(r"^-?[0-9]+$")


def documents_dir() -> Path:
    spec = importlib.util.find_spec("googleapiclient")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("discovery.py: google-api-python-client is not installed in this python; "
                         "run scripts/emulators/install.sh and use .venv/emulators/bin/python")
    return Path(list(spec.submodule_search_locations)[0]) / "discovery_cache" / "documents"


@dataclass
class Violation:
    field: str
    problem: str


@dataclass
class Method:
    """One method of a discovery document, and the URL paths it answers on."""
    id: str
    http_method: str
    template: str  # "/bigquery/v2/projects/{projectId}/jobs", for messages
    paths: list
    spec: dict

    def __post_init__(self):
        # First every parameter as one path segment (BigQuery ids, Cloud
        # Storage's escaped object names), then `{+name}` across slashes
        # (Cloud Run's `v2/{+name}:run`).
        self.passes = [[_template_regex(p, s) for p in self.paths] for s in ("[^/]+", ".+")]

    @property
    def call(self) -> str:
        return f"{self.http_method} {self.template}"


def _template_regex(template: str, segment: str) -> "re.Pattern":
    """`{x}` matches one path segment; `{+x}` matches `segment`."""
    out, pos = "", 0
    for m in re.finditer(r"\{(\+?)([^}]+)\}", template):
        value = segment if m.group(1) else "[^/]+"
        out += re.escape(template[pos:m.start()]) + f"(?P<{_group(m.group(2))}>{value})"
        pos = m.end()
    return re.compile("^" + out + re.escape(template[pos:]) + "$")


def _group(name: str) -> str:
    # Regex group names are identifiers; parameter names are close to that.
    return re.sub(r"\W", "_", name)


def plain_template(template: str) -> str:
    return re.sub(r"\{\+", "{", template)


class Api:
    """A discovery document: its methods by HTTP method and path, its schemas."""

    def __init__(self, name: str):
        self.name = name
        self.doc = json.loads((documents_dir() / f"{name}.json").read_text())
        self.title = f"{self.doc.get('canonicalName') or self.doc['name']} {self.doc['version']}"
        self.schemas = self.doc.get("schemas", {})
        self.global_params = self.doc.get("parameters", {})
        self.methods: list = []
        base = "/" + self.doc["servicePath"]
        for spec in self._walk(self.doc):
            paths = [base + spec["path"]]
            uploads = spec.get("mediaUpload", {}).get("protocols", {})
            paths += [p["path"] for p in uploads.values()]
            if spec.get("supportsMediaDownload"):
                paths.append("/download" + base + spec["path"])
            template = plain_template(paths[0])
            self.methods.append(Method(spec["id"], spec["httpMethod"], template,
                                       paths, spec))
        # Most literal text first: `jobs/{jobId}/cancel` before `jobs/{jobId}`.
        self.methods.sort(key=lambda m: -len(re.sub(r"\{[^}]*\}", "", m.template)))

    def _walk(self, node: dict):
        yield from node.get("methods", {}).values()
        for sub in node.get("resources", {}).values():
            yield from self._walk(sub)

    def find(self, http_method: str, path: str):
        """The method answering `http_method path` and its path parameters.

        Several methods may share a template (Cloud Run's
        `/v2/{resource}:testIamPermissions` serves jobs, services, instances
        and more): the one whose path parameters match their patterns wins."""
        for attempt in (0, 1):
            candidates = []
            for m in self.methods:
                if m.http_method != http_method:
                    continue
                for rx in m.passes[attempt]:
                    hit = rx.match(path)
                    if hit:
                        names = {_group(n): n for n in m.spec.get("parameters", {})}
                        params = {names.get(k, k): urllib.parse.unquote(v) for k, v in hit.groupdict().items()}
                        candidates.append((m, params))
                        break
            for m, params in candidates:
                specs = m.spec.get("parameters", {})
                if all(re.search(specs.get(k, {}).get("pattern", ""), v) for k, v in params.items()):
                    return m, params
            if candidates:
                return candidates[0]
        return None, {}

    # --- requests ---------------------------------------------------------------
    def check_request(self, method: Method, path_params: dict, query: dict, body) -> list:
        out = []
        params = method.spec.get("parameters", {})
        for name, value in path_params.items():
            if name in params:
                out += self._check_param(f"path parameter {name}", params[name], [value])
        for name, values in query.items():
            spec = params.get(name) or self.global_params.get(name)
            if spec is None:
                if name not in SYSTEM_PARAMETERS:
                    out.append(Violation(f"query parameter {name}", f"unknown: {method.id} takes "
                                         f"{', '.join(sorted(n for n, p in params.items() if p.get('location') == 'query')) or 'no query parameters'}"))
                continue
            out += self._check_param(f"query parameter {name}", spec, values)
        for name, spec in params.items():
            if spec.get("required") and name not in path_params and name not in query:
                out.append(Violation(f"{spec.get('location', 'query')} parameter {name}", "required, missing"))
        request = method.spec.get("request")
        if body is not None:
            if request is None:
                out.append(Violation("body", f"{method.id} takes no request body"))
            else:
                out += self.check_value(body, request, "", strict=False)
        return out

    def _check_param(self, where: str, spec: dict, values: list) -> list:
        if len(values) > 1 and not spec.get("repeated"):
            return [Violation(where, f"given {len(values)} times, takes one value")]
        out = []
        for v in values:
            t = spec.get("type", "string")
            if t == "integer" and not INTEGER_RE.match(v):
                out.append(Violation(where, f"{v!r} is not an integer"))
            elif t == "boolean" and v not in ("true", "false"):
                out.append(Violation(where, f"{v!r} is not true or false"))
            elif "enum" in spec and v not in spec["enum"] and not _enum_index(v, spec["enum"]):
                out.append(Violation(where, f"{v!r} is not one of {', '.join(spec['enum'])}"))
            elif "pattern" in spec and not re.search(spec["pattern"], v):
                out.append(Violation(where, f"{v!r} does not match {spec['pattern']}"))
        return out

    # --- values (request bodies: lenient like Google's parser; answers: strict) --
    def check_value(self, value, schema: dict, field: str, strict: bool, enum_ints: bool = False) -> list:
        if "$ref" in schema:
            ref = schema["$ref"]
            return self.check_value(value, self.schemas[ref], field, strict, enum_ints) if ref in self.schemas else []
        where = field or "body"
        t = schema.get("type", "any")
        if t == "any":
            return []  # a table cell's `v`, say: null is how BigQuery sends NULL
        if value is None:
            # Google's parser takes null as "unset"; Google never sends one.
            return [Violation(where, "null, where the API omits an unset field")] if strict else []
        fmt = schema.get("format")
        if t == "object":
            if not isinstance(value, dict):
                return [Violation(where, f"{_kind(value)}, the API has an object ({schema.get('id', 'object')})")]
            return self._check_object(value, schema, field, strict, enum_ints)
        if t == "array":
            if not isinstance(value, list):
                return [Violation(where, f"{_kind(value)}, the API has an array")]
            out = []
            for i, item in enumerate(value):
                out += self.check_value(item, schema.get("items", {}), f"{field}[{i}]", strict, enum_ints)
            return out
        if t == "string":
            if fmt in INT_FORMATS:
                if isinstance(value, str) and INTEGER_RE.match(value):
                    return []
                if not strict and isinstance(value, int) and not isinstance(value, bool):
                    return []
                return [Violation(where, f"{_kind(value)} {_short(value)}, the API has an {fmt} as a JSON string of digits")]
            if "enum" in schema and isinstance(value, int) and _enum_index(str(value), schema["enum"]) \
                    and (not strict or enum_ints):
                return []
            if not isinstance(value, str):
                return [Violation(where, f"{_kind(value)} {_short(value)}, the API has a string"
                                  + (f" ({fmt})" if fmt else ""))]
            if "enum" in schema and value not in schema["enum"]:
                return [Violation(where, f"{value!r} is not one of {', '.join(schema['enum'])}")]
            return []
        if t == "integer":
            ok = isinstance(value, int) and not isinstance(value, bool)
            ok = ok or (not strict and isinstance(value, str) and bool(INTEGER_RE.match(value)))
            return [] if ok else [Violation(where, f"{_kind(value)} {_short(value)}, the API has an integer ({fmt})")]
        if t == "number":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = ok or (not strict and isinstance(value, str) and _is_number(value))
            return [] if ok else [Violation(where, f"{_kind(value)} {_short(value)}, the API has a number ({fmt})")]
        if t == "boolean":
            return [] if isinstance(value, bool) else [Violation(where, f"{_kind(value)} {_short(value)}, the API has a boolean")]
        return []

    def _check_object(self, value: dict, schema: dict, field: str, strict: bool, enum_ints: bool) -> list:
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        out = []
        for key, item in value.items():
            sub = f"{field}.{key}" if field else key
            if props and key in props:
                out += self.check_value(item, props[key], sub, strict, enum_ints)
            elif extra is not None:
                out += self.check_value(item, extra, sub, strict, enum_ints)
            elif props is not None or extra is not None:
                name = schema.get("id", "this object")
                out.append(Violation(sub, f"unknown field: {name} has {', '.join(sorted(props))}"
                                     if props else f"unknown field in {name}"))
        return out

    def check_response(self, method: Method, body, enum_ints: bool) -> list:
        """`enum_ints`: the request asked for enums as numbers
        (`$alt=json;enum-encoding=int`, as the Rust client libraries do)."""
        response = method.spec.get("response")
        if response is None:
            return [] if body in (None, {}, "") else [Violation("body", f"{method.id} answers no body")]
        return self.check_value(body, response, "", strict=True, enum_ints=enum_ints)


def _kind(value) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "an array", dict: "an object"}.get(type(value), type(value).__name__)


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _enum_index(text: str, values: list) -> bool:
    """Whether `text` is an enum value by number: Google's parser takes
    the value's position in the list as well as its name."""
    return bool(INTEGER_RE.match(text)) and 0 <= int(text) < len(values)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
