# Any message on the dead-letter subscription is a table that was not
# exported; alert when one stays there.
resource "google_monitoring_alert_policy" "dead_letters" {
  project               = var.project_id
  display_name          = "bqdrain: tables dead-lettered (${var.name_prefix})"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = var.alert_notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "Dead-letter subscription backlog above zero"

    condition_threshold {
      filter          = local.dead_letter_backlog_filter
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "${var.alert_after_seconds}s"

      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }

      trigger {
        count = 1
      }
    }
  }

  alert_strategy {
    auto_close = "86400s"
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      Tables of a bqdrain run were dead-lettered: their exports kept failing
      or failed for a reason a retry cannot fix. Each message carries the
      reason. Inspect and send them back once the cause is fixed:

          bqdrain replay --from ${local.dead_letter_subscription_uri} --to pubsub://${google_pubsub_topic.work.id} --dry-run
          bqdrain replay --from ${local.dead_letter_subscription_uri} --to pubsub://${google_pubsub_topic.work.id}
    EOT
  }

  depends_on = [google_project_service.required]
}

locals {
  dead_letter_subscription_uri = "pubsub://${google_pubsub_subscription.dead_letter.id}"
  dead_letter_backlog_filter   = "resource.type = \"pubsub_subscription\" AND resource.labels.subscription_id = \"${google_pubsub_subscription.dead_letter.name}\" AND metric.type = \"pubsub.googleapis.com/subscription/num_undelivered_messages\""
}
