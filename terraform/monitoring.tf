# What the on-call is told, each policy to var.alert_notification_channels
# (checks.tf warns, and the output alert_notification_warning says, when
# there are none: the policies then open incidents that notify nobody):
#
#   dead_letters        a table was dead-lettered (each new one), and the
#                       dead-letter backlog is not empty (reminded daily)
#   failed_executions   a producer or worker execution failed: a worker exits
#                       0 when the units left are held by other live tasks,
#                       so a failed execution is a real failure
#   producer_missed_run no successful producer execution within
#                       producer_missed_run_alert_seconds (the schedule did
#                       not fire, or every run failed)
#   work_backlog_age    a work message waits longer than workers should need
#   scheduler_errors    a Cloud Scheduler attempt to start a job failed
#
# Metric-based incidents that stay open are notified again every
# alert_renotify_seconds (notification_channel_strategy.renotify_interval);
# log-based ones are rate-limited instead (notification_rate_limit, which
# Cloud Monitoring requires of them).

locals {
  dead_letter_subscription_uri = "pubsub://${google_pubsub_subscription.dead_letter.id}"
  dead_letter_backlog_filter   = "resource.type = \"pubsub_subscription\" AND resource.labels.subscription_id = \"${google_pubsub_subscription.dead_letter.name}\" AND metric.type = \"pubsub.googleapis.com/subscription/num_undelivered_messages\""

  # New dead letters: those the worker publishes (permanent failures, last
  # attempts) and those Pub/Sub forwards after max_delivery_attempts.
  dead_letter_published_filter = "resource.type = \"pubsub_topic\" AND resource.labels.topic_id = \"${google_pubsub_topic.dead_letter.name}\" AND metric.type = \"pubsub.googleapis.com/topic/send_message_operation_count\""
  dead_letter_forwarded_filter = "resource.type = \"pubsub_subscription\" AND resource.labels.subscription_id = \"${google_pubsub_subscription.work.name}\" AND metric.type = \"pubsub.googleapis.com/subscription/dead_letter_message_count\""

  # Completed executions of a Cloud Run job, by result ("succeeded", "failed").
  jobs_by_role = {
    producer = google_cloud_run_v2_job.producer.name
    worker   = google_cloud_run_v2_job.worker.name
  }
  failed_execution_filters = {
    for role, job in local.jobs_by_role :
    role => "resource.type = \"cloud_run_job\" AND resource.labels.job_name = \"${job}\" AND metric.type = \"run.googleapis.com/job/completed_execution_count\" AND metric.labels.result = \"failed\""
  }
  producer_succeeded_filter = "resource.type = \"cloud_run_job\" AND resource.labels.job_name = \"${google_cloud_run_v2_job.producer.name}\" AND metric.type = \"run.googleapis.com/job/completed_execution_count\" AND metric.labels.result = \"succeeded\""

  work_oldest_unacked_filter = "resource.type = \"pubsub_subscription\" AND resource.labels.subscription_id = \"${google_pubsub_subscription.work.name}\" AND metric.type = \"pubsub.googleapis.com/subscription/oldest_unacked_message_age\""
  work_backlog_alert_seconds = coalesce(var.work_backlog_alert_seconds, 2 * var.worker_task_timeout_seconds)

  # Cloud Scheduler logs each attempt's end (AttemptFinished); a failed one
  # at severity ERROR.
  scheduler_errors_filter = join(" AND ", [
    "resource.type = \"cloud_scheduler_job\"",
    "(${join(" OR ", [for j in google_cloud_scheduler_job.start : "resource.labels.job_id = \"${j.name}\""])})",
    "jsonPayload.\"@type\" = \"type.googleapis.com/google.cloud.scheduler.logging.AttemptFinished\"",
    "severity >= ERROR",
  ])

  # An alerting policy's alignment period is at most 25 hours
  # (https://cloud.google.com/monitoring/api/ref_v3/rest/v3/projects.alertPolicies,
  # Aggregation.alignmentPeriod: "90,000 seconds (25 hours) for alerting
  # policies"); a longer window adds a retest window (duration): "no success
  # in the last 25 h" held for D seconds = no success in the last 25 h + D.
  producer_missed_run_alignment = var.producer_missed_run_alert_seconds == null ? 0 : min(var.producer_missed_run_alert_seconds, 90000)
  producer_missed_run_duration  = var.producer_missed_run_alert_seconds == null ? 0 : var.producer_missed_run_alert_seconds - local.producer_missed_run_alignment

  # Reminders for open incidents, on every channel.
  renotify = length(var.alert_notification_channels) > 0 && var.alert_renotify_seconds != null ? [var.alert_renotify_seconds] : []

  alerts_unrouted = length(var.alert_notification_channels) == 0
}

# Any message on the dead-letter subscription is a table that was not
# exported. The backlog condition opens one incident while the backlog lasts
# (reminded every alert_renotify_seconds); the two others open one for each
# new batch of dead letters, so a later day's dead letters are told too while
# an earlier day's still wait.
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

  conditions {
    display_name = "New dead letters published by the worker"

    condition_threshold {
      filter          = local.dead_letter_published_filter
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"

      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_SUM"
      }

      trigger {
        count = 1
      }
    }
  }

  conditions {
    display_name = "New dead letters forwarded by Pub/Sub after max_delivery_attempts"

    condition_threshold {
      filter          = local.dead_letter_forwarded_filter
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"

      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_SUM"
      }

      trigger {
        count = 1
      }
    }
  }

  alert_strategy {
    auto_close = "86400s"

    dynamic "notification_channel_strategy" {
      for_each = local.renotify
      content {
        notification_channel_names = var.alert_notification_channels
        renotify_interval          = "${notification_channel_strategy.value}s"
      }
    }
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

# A failed execution: with worker_launch = "producer" a worker exits 0 when
# the units left are held by other live tasks, so an execution fails only
# when a task kept failing (Cloud Run retried it worker_max_retries times).
resource "google_monitoring_alert_policy" "failed_executions" {
  project               = var.project_id
  display_name          = "bqdrain: job execution failed (${var.name_prefix})"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = var.alert_notification_channels
  user_labels           = local.labels

  dynamic "conditions" {
    for_each = local.failed_execution_filters
    content {
      display_name = "Failed ${conditions.key} execution (${local.jobs_by_role[conditions.key]})"

      condition_threshold {
        filter          = conditions.value
        comparison      = "COMPARISON_GT"
        threshold_value = 0
        duration        = "0s"

        aggregations {
          alignment_period   = "300s"
          per_series_aligner = "ALIGN_SUM"
        }

        trigger {
          count = 1
        }
      }
    }
  }

  alert_strategy {
    auto_close = "86400s"
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      An execution of a bqdrain Cloud Run job failed. Its tasks' logs say why:

          gcloud run jobs executions list --job JOB --project ${var.project_id} --region ${var.region}
          gcloud logging read 'resource.type="cloud_run_job" AND severity>=ERROR' --project ${var.project_id} --freshness 1d

      A failed producer published nothing or part of its run: run it again
      (it resumes the same run when Cloud Run retries it). A failed worker's
      units go back to the queue and, past max_delivery_attempts, to the
      dead-letter subscription: `bqdrain status --destination ${local.destination_uri} --run-id RUN_ID`.
    EOT
  }

  depends_on = [google_project_service.required]
}

# No successful producer execution within the window: the schedule did not
# fire, the scheduler could not start the job, or every run failed. Missing
# data counts as a violation (no success at all is exactly the case).
resource "google_monitoring_alert_policy" "producer_missed_run" {
  count = var.producer_missed_run_alert_seconds == null ? 0 : 1

  project               = var.project_id
  display_name          = "bqdrain: no successful run (${var.name_prefix})"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = var.alert_notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "No successful producer execution in ${var.producer_missed_run_alert_seconds} s"

    condition_threshold {
      filter                  = local.producer_succeeded_filter
      comparison              = "COMPARISON_LT"
      threshold_value         = 1
      duration                = "${local.producer_missed_run_duration}s"
      evaluation_missing_data = "EVALUATION_MISSING_DATA_ACTIVE"

      aggregations {
        alignment_period     = "${local.producer_missed_run_alignment}s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.label.job_name"]
      }

      trigger {
        count = 1
      }
    }
  }

  alert_strategy {
    auto_close = "86400s"

    dynamic "notification_channel_strategy" {
      for_each = local.renotify
      content {
        notification_channel_names = var.alert_notification_channels
        renotify_interval          = "${notification_channel_strategy.value}s"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      The bqdrain producer has not completed a run in ${var.producer_missed_run_alert_seconds} s
      (schedule "${var.schedule}", ${var.time_zone}). Look at the scheduler job
      (`gcloud scheduler jobs describe ${var.name_prefix}-producer --location ${coalesce(var.scheduler_region, var.region)} --project ${var.project_id}`)
      and the producer's executions; start a run by hand with
      `gcloud run jobs execute ${google_cloud_run_v2_job.producer.name} --project ${var.project_id} --region ${var.region} --wait`.
    EOT
  }

  depends_on = [google_project_service.required]
}

# A work message older than the workers should need: no worker is draining
# (the launch failed, every task died), or the run is far slower than sized.
resource "google_monitoring_alert_policy" "work_backlog_age" {
  project               = var.project_id
  display_name          = "bqdrain: work waits too long (${var.name_prefix})"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = var.alert_notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "Oldest unacked work message older than ${local.work_backlog_alert_seconds} s"

    condition_threshold {
      filter          = local.work_oldest_unacked_filter
      comparison      = "COMPARISON_GT"
      threshold_value = local.work_backlog_alert_seconds
      duration        = "300s"

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

    dynamic "notification_channel_strategy" {
      for_each = local.renotify
      content {
        notification_channel_names = var.alert_notification_channels
        renotify_interval          = "${notification_channel_strategy.value}s"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      A message of the work subscription ${google_pubsub_subscription.work.name} has waited
      more than ${local.work_backlog_alert_seconds} s. Are worker tasks running?

          gcloud run jobs executions list --job ${google_cloud_run_v2_job.worker.name} --project ${var.project_id} --region ${var.region}
          bqdrain status --destination ${local.destination_uri} --run-id RUN_ID

      Start workers by hand if none run: `gcloud run jobs execute ${google_cloud_run_v2_job.worker.name} --tasks N`.
    EOT
  }

  depends_on = [google_project_service.required]
}

# A failed Cloud Scheduler attempt (the Cloud Run Admin API refused jobs.run,
# or did not answer in time). Log-based: at most one notification per hour.
resource "google_monitoring_alert_policy" "scheduler_errors" {
  project               = var.project_id
  display_name          = "bqdrain: scheduler attempt failed (${var.name_prefix})"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = var.alert_notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "Cloud Scheduler AttemptFinished with an error"

    condition_matched_log {
      filter = local.scheduler_errors_filter
    }
  }

  alert_strategy {
    auto_close = "86400s"

    # Required for log-based policies
    # (https://cloud.google.com/monitoring/api/ref_v3/rest/v3/projects.alertPolicies,
    # AlertStrategy.notificationRateLimit).
    notification_rate_limit {
      period = "3600s"
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      Cloud Scheduler could not start a bqdrain job (it retries twice). The log
      entry's status and debugInfo say why: a 403 is a missing run.invoker grant
      on the job, a 404 a job or region that does not exist.

          gcloud logging read '${replace(local.scheduler_errors_filter, "'", "")}' --project ${var.project_id} --freshness 1d
    EOT
  }

  depends_on = [google_project_service.required]
}
