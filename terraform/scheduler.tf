# Cloud Scheduler starts a run by calling the Cloud Run Admin API's
# jobs.run as the scheduler account, which may do nothing else.

locals {
  run_api = "https://run.googleapis.com/v2/projects/${var.project_id}/locations/${var.region}/jobs"

  # The producer's schedule, and with worker_launch = "schedule" the
  # alternative to workers launched by the producer: a fixed task count on
  # its own schedule, a little after the producer's; those tasks stop after
  # their idle timeout once the queue is empty.
  schedules = merge(
    {
      producer = {
        job         = google_cloud_run_v2_job.producer.name
        schedule    = var.schedule
        description = "Starts a bqdrain run: the producer publishes one message per table."
      }
    },
    local.launched_by_producer ? {} : {
      worker = {
        job         = google_cloud_run_v2_job.worker.name
        schedule    = var.worker_schedule
        description = "Starts bqdrain worker tasks to drain the work subscription."
      }
    },
  )
}

resource "google_cloud_scheduler_job" "start" {
  for_each = local.schedules

  project          = var.project_id
  region           = coalesce(var.scheduler_region, var.region)
  name             = "${var.name_prefix}-${each.key}"
  description      = each.value.description
  schedule         = each.value.schedule
  time_zone        = var.time_zone
  attempt_deadline = "60s"

  retry_config {
    retry_count          = 2
    min_backoff_duration = "30s"
  }

  http_target {
    http_method = "POST"
    uri         = "${local.run_api}/${each.value.job}:run"

    oauth_token {
      service_account_email = google_service_account.scheduler.email
      scope                 = "https://www.googleapis.com/auth/cloud-platform"
    }
  }

  depends_on = [
    google_cloud_run_v2_job_iam_member.scheduler_starts_producer,
    google_cloud_run_v2_job_iam_member.scheduler_starts_workers,
  ]
}
