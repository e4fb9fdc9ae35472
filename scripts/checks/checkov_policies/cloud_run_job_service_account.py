"""Cloud Run jobs run as their own service account, never the default one.

Without template.template.service_account a job runs as the Compute Engine
default service account (PROJECT_NUMBER-compute@developer.gserviceaccount.com),
which has roles/editor on the project in many projects.
"""

from __future__ import annotations

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.terraform.checks.resource.base_resource_check import BaseResourceCheck

from _bqd import block, value

DEFAULT_SA_MARKERS = ("-compute@developer.gserviceaccount.com", "google_compute_default_service_account")


class CloudRunJobServiceAccount(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Cloud Run v2 jobs set template.template.service_account, not the default compute SA",
            id="CKV_BQD_4",
            categories=[CheckCategories.IAM],
            supported_resources=["google_cloud_run_v2_job"],
        )

    def scan_resource_conf(self, conf):
        self.evaluated_keys = ["template/[0]/template/[0]/service_account"]
        outer = block(conf, "template") or {}
        inner = block(outer, "template") or {}
        account = value(inner, "service_account")
        if not isinstance(account, str) or not account.strip():
            self.details.append("no template.template.service_account: the job would run as the "
                                "default compute service account")
            return CheckResult.FAILED
        if any(marker in account for marker in DEFAULT_SA_MARKERS):
            self.details.append(f"service_account {account!r} is the default compute service account")
            return CheckResult.FAILED
        return CheckResult.PASSED


check = CloudRunJobServiceAccount()
