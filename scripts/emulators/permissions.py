"""The permission table (src/adapters/gcp/permissions.json): which calls
bqdrain may make. discovery_proxy.py refuses a call no entry lists, as
Google would refuse a call the module grants no permission for."""

import json
import re

HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"}


class PermissionTable:
    def __init__(self, path: str, who: "str | None"):
        self.path, self.who = path, who
        self.entries = []
        for entry in json.loads(open(path).read()):
            verb, _, template = entry["call"].partition(" ")
            if verb not in HTTP_METHODS:
                continue  # a gRPC method (Pub/Sub): the proxy does not see those
            if who is not None and who not in entry.get("who", []):
                continue
            self.entries.append((verb, _regex(template), entry))

    def refusal(self, http_method: str, path: str) -> "str | None":
        """None when an entry lists the call, else why it is refused."""
        for verb, rx, _ in self.entries:
            if verb == http_method and rx.match(path):
                return None
        whose = f" for {self.who}" if self.who else ""
        return (f"{http_method} {path}: no entry of {self.path}{whose} lists this call; "
                "add it there with its permission, and grant that in terraform/")


def _regex(template: str) -> "re.Pattern":
    parts = re.split(r"\{\+?[^}]+\}", template)
    return re.compile("^" + "[^/]+".join(re.escape(p) for p in parts) + "$")
