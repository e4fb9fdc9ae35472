# Cloud Scheduler starts a run by calling the Cloud Run Admin API's
# jobs.run as the scheduler account, which may do nothing else.

locals {
  scheduler_region = coalesce(var.scheduler_region, var.region)
  run_api          = "https://run.googleapis.com/v2/projects/${var.project_id}/locations/${var.region}/jobs"
}

resource "google_cloud_scheduler_job" "producer" {
  project          = var.project_id
  region           = local.scheduler_region
  name             = "${var.name_prefix}-producer"
  description      = "Starts a bqdrain run: the producer publishes one message per table."
  schedule         = var.schedule
  time_zone        = var.time_zone
  attempt_deadline = "60s"

  retry_config {
    retry_count          = 2
    min_backoff_duration = "30s"
  }

  http_target {
    http_method = "POST"
    uri         = "${local.run_api}/${google_cloud_run_v2_job.producer.name}:run"

    oauth_token {
      service_account_email = google_service_account.scheduler.email
      scope                 = "https://www.googleapis.com/auth/cloud-platform"
    }
  }

  depends_on = [google_cloud_run_v2_job_iam_member.scheduler_starts_producer]
}

# The alternative to workers launched by the producer: a fixed task count
# on its own schedule, a little after the producer's; tasks stop after
# their idle timeout once the queue is empty.
resource "google_cloud_scheduler_job" "worker" {
  count = local.launched_by_producer ? 0 : 1

  project          = var.project_id
  region           = local.scheduler_region
  name             = "${var.name_prefix}-worker"
  description      = "Starts bqdrain worker tasks to drain the work subscription."
  schedule         = var.worker_schedule
  time_zone        = var.time_zone
  attempt_deadline = "60s"

  retry_config {
    retry_count          = 2
    min_backoff_duration = "30s"
  }

  http_target {
    http_method = "POST"
    uri         = "${local.run_api}/${google_cloud_run_v2_job.worker.name}:run"

    oauth_token {
      service_account_email = google_service_account.scheduler.email
      scope                 = "https://www.googleapis.com/auth/cloud-platform"
    }
  }

  depends_on = [google_cloud_run_v2_job_iam_member.scheduler_starts_workers]
}
