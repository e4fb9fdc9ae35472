"""No basic and no admin roles in any IAM grant.

Basic roles (owner, editor, viewer) span every service; admin roles
(roles/storage.admin, roles/bigquery.admin, roles/run.admin,
roles/iam.serviceAccountAdmin, ...) can change access or delete resources.
bqdrain needs neither. Covers google_*_iam_member / _iam_binding (the role
attribute), google_*_iam_policy with a literal policy_data, and the
google_iam_policy data source (its binding blocks). A role checkov cannot
resolve to a literal fails too: what cannot be read cannot be proven narrow.
"""

from __future__ import annotations

import json
import re

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.terraform.checks.data.base_check import BaseDataCheck
from checkov.terraform.checks.resource.base_resource_check import BaseResourceCheck

from _bqd import value

BASIC_ROLES = {"roles/owner", "roles/editor", "roles/viewer"}
NAME = "IAM grants use neither basic roles (owner, editor, viewer) nor admin roles (*.admin, *Admin)"
# roles/x or projects/p/roles/x or organizations/o/roles/x: a literal role name.
LITERAL_ROLE = re.compile(r"^((projects|organizations)/[^/]+/)?roles/[A-Za-z0-9_.]+$")


def broad_role_problem(role) -> str | None:
    """Why a role is not allowed, or None if it is narrow."""
    if not isinstance(role, str) or not LITERAL_ROLE.match(role):
        return f"role {role!r} is not a literal role name: cannot prove it is neither basic nor admin"
    if role in BASIC_ROLES:
        return f"basic role {role}"
    last = role.rsplit("/", 1)[-1]
    if last.endswith(".admin") or last.endswith("Admin") or last == "admin":
        return f"admin role {role}"
    return None


class IamNoBroadRoles(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name=NAME,
            id="CKV_BQD_5",
            categories=[CheckCategories.IAM],
            supported_resources=["google_*_iam_member", "google_*_iam_binding", "google_*_iam_policy"],
        )

    def scan_resource_conf(self, conf):
        if "policy_data" in conf:
            self.evaluated_keys = ["policy_data"]
            return self.scan_policy_data(value(conf, "policy_data"))
        self.evaluated_keys = ["role"]
        problem = broad_role_problem(value(conf, "role"))
        if problem:
            self.details.append(problem)
            return CheckResult.FAILED
        return CheckResult.PASSED

    def scan_policy_data(self, data) -> CheckResult:
        """A literal JSON policy is checked; a reference to data.google_iam_policy
        is checked by CKV_BQD_6 on that data source."""
        if isinstance(data, str) and data.startswith("data.google_iam_policy."):
            return CheckResult.PASSED
        try:
            bindings = (json.loads(data) if isinstance(data, str) else data).get("bindings", [])
        except (ValueError, AttributeError):
            self.details.append("policy_data is neither JSON nor a data.google_iam_policy reference")
            return CheckResult.FAILED
        problems = [p for b in bindings if (p := broad_role_problem(b.get("role")))]
        self.details.extend(problems)
        return CheckResult.FAILED if problems else CheckResult.PASSED


class IamPolicyDataNoBroadRoles(BaseDataCheck):
    def __init__(self) -> None:
        super().__init__(
            name=NAME,
            id="CKV_BQD_6",
            categories=[CheckCategories.IAM],
            supported_data=["google_iam_policy"],
        )

    def scan_data_conf(self, conf):
        self.evaluated_keys = ["binding"]
        problems = [p for b in conf.get("binding", []) if isinstance(b, dict)
                    and (p := broad_role_problem(value(b, "role")))]
        self.details.extend(problems)
        return CheckResult.FAILED if problems else CheckResult.PASSED


resource_check = IamNoBroadRoles()
data_check = IamPolicyDataNoBroadRoles()
