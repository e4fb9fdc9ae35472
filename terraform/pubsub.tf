# The work queue: one message per table of a run.
resource "google_pubsub_topic" "work" {
  project = var.project_id
  name    = "${var.name_prefix}-work"
  labels  = local.labels

  depends_on = [google_project_service.required]
}

resource "google_pubsub_subscription" "work" {
  project = var.project_id
  name    = "${var.name_prefix}-work"
  topic   = google_pubsub_topic.work.id
  labels  = local.labels

  # The worker extends its leases while an export runs; this is only how
  # long a crashed task keeps a message before redelivery.
  ack_deadline_seconds       = var.ack_deadline_seconds
  message_retention_duration = "${var.message_retention_seconds}s"
  retain_acked_messages      = false

  # A batch subscription is idle between runs; the default 31-day expiry
  # would delete it.
  expiration_policy {
    ttl = ""
  }

  retry_policy {
    minimum_backoff = "${var.minimum_backoff_seconds}s"
    maximum_backoff = "${var.maximum_backoff_seconds}s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = var.max_delivery_attempts
  }
}

# Units that kept failing, forwarded by Pub/Sub after max_delivery_attempts
# or published by the worker with the reason of a permanent failure.
resource "google_pubsub_topic" "dead_letter" {
  project = var.project_id
  name    = "${var.name_prefix}-dead-letter"
  labels  = local.labels

  depends_on = [google_project_service.required]
}

# Messages forwarded to a topic with no subscription are lost; this one
# keeps them for `bqdrain replay` and for the alert.
resource "google_pubsub_subscription" "dead_letter" {
  project = var.project_id
  name    = "${var.name_prefix}-dead-letter"
  topic   = google_pubsub_topic.dead_letter.id
  labels  = merge(local.labels, { "role" = "dead-letter" })

  ack_deadline_seconds       = var.ack_deadline_seconds
  message_retention_duration = "${var.dead_letter_retention_seconds}s"
  retain_acked_messages      = false

  expiration_policy {
    ttl = ""
  }

  retry_policy {
    minimum_backoff = "${var.minimum_backoff_seconds}s"
    maximum_backoff = "${var.maximum_backoff_seconds}s"
  }
}
