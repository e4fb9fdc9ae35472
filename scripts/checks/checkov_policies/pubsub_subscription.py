"""Pull subscriptions: dead-letter policy, retry policy, never expire.

bqdrain's worker relies on Pub/Sub's own dead-lettering (a message whose
lease keeps lapsing is forwarded after max_delivery_attempts), on backoff
between redeliveries, and on a subscription that survives idle weeks between
runs (the default expiration_policy deletes it after 31 idle days).

The dead-letter subscription itself is recognised by the label
role = "dead-letter": it cannot dead-letter into its own topic, so
CKV_BQD_1 does not apply to it (and fails if it tries to), while
CKV_BQD_2 and CKV_BQD_3 do. Push, BigQuery and Cloud Storage subscriptions
are not pulled by bqdrain: none of these checks apply to them.
"""

from __future__ import annotations

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.terraform.checks.resource.base_resource_check import BaseResourceCheck

from _bqd import block, is_dead_letter_subscription, is_pull_subscription, value


class PullSubscriptionDeadLetterPolicy(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Pub/Sub pull subscriptions have a dead-letter policy with max_delivery_attempts "
                 "(except the dead-letter subscription, label role = \"dead-letter\")",
            id="CKV_BQD_1",
            categories=[CheckCategories.GENERAL_SECURITY],
            supported_resources=["google_pubsub_subscription"],
        )

    def scan_resource_conf(self, conf):
        self.evaluated_keys = ["dead_letter_policy", "labels"]
        if not is_pull_subscription(conf):
            return CheckResult.PASSED
        policy = block(conf, "dead_letter_policy")
        if is_dead_letter_subscription(conf):
            if policy and value(policy, "dead_letter_topic") == value(conf, "topic"):
                self.details.append("the dead-letter subscription dead-letters into its own topic")
                return CheckResult.FAILED
            return CheckResult.PASSED
        if policy is None:
            self.details.append("no dead_letter_policy block")
            return CheckResult.FAILED
        missing = [k for k in ("dead_letter_topic", "max_delivery_attempts") if value(policy, k) in (None, "")]
        if missing:
            self.details.append(f"dead_letter_policy without {', '.join(missing)}")
            return CheckResult.FAILED
        attempts = value(policy, "max_delivery_attempts")
        if isinstance(attempts, (int, float)) and not 5 <= attempts <= 100:
            self.details.append(f"max_delivery_attempts = {attempts}, Pub/Sub allows 5-100")
            return CheckResult.FAILED
        return CheckResult.PASSED


class PullSubscriptionRetryPolicy(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Pub/Sub pull subscriptions have a retry_policy (backoff between redeliveries)",
            id="CKV_BQD_2",
            categories=[CheckCategories.GENERAL_SECURITY],
            supported_resources=["google_pubsub_subscription"],
        )

    def scan_resource_conf(self, conf):
        self.evaluated_keys = ["retry_policy"]
        # An empty `retry_policy {}` counts: Pub/Sub's default backoff is 10s-600s.
        if not is_pull_subscription(conf) or block(conf, "retry_policy") is not None:
            return CheckResult.PASSED
        self.details.append("no retry_policy block: redeliveries would be immediate")
        return CheckResult.FAILED


class PullSubscriptionNeverExpires(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Pub/Sub pull subscriptions never expire (expiration_policy { ttl = \"\" })",
            id="CKV_BQD_3",
            categories=[CheckCategories.GENERAL_SECURITY],
            supported_resources=["google_pubsub_subscription"],
        )

    def scan_resource_conf(self, conf):
        self.evaluated_keys = ["expiration_policy/[0]/ttl"]
        if not is_pull_subscription(conf):
            return CheckResult.PASSED
        policy = block(conf, "expiration_policy")
        if policy is None:
            self.details.append("no expiration_policy: Pub/Sub deletes the subscription after 31 idle days")
            return CheckResult.FAILED
        if value(policy, "ttl") != "":
            self.details.append(f"expiration_policy.ttl = {value(policy, 'ttl')!r}, want \"\" (never)")
            return CheckResult.FAILED
        return CheckResult.PASSED


dead_letter_check = PullSubscriptionDeadLetterPolicy()
retry_check = PullSubscriptionRetryPolicy()
expiry_check = PullSubscriptionNeverExpires()
