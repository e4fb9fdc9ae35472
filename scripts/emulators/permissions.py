"""The permission table (src/adapters/gcp/permissions.json): which calls
bqdrain makes, the permission each needs and where it is granted.
discovery_proxy.py refuses a call no entry lists, as Google refuses a call
whose permission the module does not grant."""

import json
import re

HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"}
# A region-qualified INFORMATION_SCHEMA view (`region-us.INFORMATION_SCHEMA.
# TABLE_STORAGE`) reads every dataset of the project: BigQuery wants the
# permission on the project ("for queries with a region qualifier, you must
# have permissions for the project").
REGION_VIEW = re.compile(r"`?(?:[\w-]+\.)?region-[\w-]+`?\.`?INFORMATION_SCHEMA\.(\w+)", re.I)
REGION_VIEW_PERMISSIONS = {"bigquery.tables.list", "bigquery.tables.get"}


class PermissionTable:
    def __init__(self, path: str, who: "str | None", when: "set | None"):
        """Only the entries of command `who` and of settings `when` (plus
        "always") when given; every entry otherwise."""
        self.path, self.who, self.when = path, who, when
        self.entries = []
        for entry in json.loads(open(path).read()):
            verb, _, template = entry["call"].partition(" ")
            if verb not in HTTP_METHODS:
                continue  # a gRPC method (Pub/Sub): the proxy does not see those
            if who is not None and who not in entry["who"]:
                continue
            if when is not None and entry.get("when", "always") not in when | {"always"}:
                continue
            self.entries.append((verb, _regex(template), entry))

    def refusal(self, http_method: str, path: str, body) -> "str | None":
        """None when the table grants the call, else what is missing."""
        listed = [e for verb, rx, e in self.entries if verb == http_method and rx.match(path)]
        whose = f" for {self.who}" if self.who else ""
        if not listed:
            return (f"no entry of {self.path}{whose} lists this call; add it there with "
                    "its permission, and grant that in terraform/")
        view = REGION_VIEW.search(_query_text(body))
        if view and not any(_permissions(e) & REGION_VIEW_PERMISSIONS and e["resource"] == "project"
                            for e in listed):
            return (f"the query reads {view.group(0)}, which needs bigquery.tables.list on the "
                    f"project, and no entry of {self.path}{whose} grants that there (the module "
                    "grants dataset-level reads only): read the dataset's own INFORMATION_SCHEMA")
        return None


def _permissions(entry: dict) -> set:
    p = entry.get("permission") or []
    return {p} if isinstance(p, str) else set(p)


def _query_text(body) -> str:
    """The SQL of a jobs.query or jobs.insert body, or ""."""
    if not isinstance(body, dict):
        return ""
    query = body.get("query")
    if isinstance(query, str):
        return query
    return str(((body.get("configuration") or {}).get("query") or {}).get("query") or "")


def _regex(template: str) -> "re.Pattern":
    parts = re.split(r"\{\+?[^}]+\}", template)
    return re.compile("^" + "[^/]+".join(re.escape(p) for p in parts) + "$")
