output "destination_uri" {
  description = "Export root: pass it to bqdrain status."
  value       = local.destination_uri
}

output "bucket_name" {
  description = "Export bucket."
  value       = google_storage_bucket.exports.name
}

output "image_repository" {
  description = "Where to push the image: docker push IMAGE_REPOSITORY/bqdrain:TAG."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
}

output "image" {
  description = "Image the jobs run."
  value       = local.image
}

output "work_topic" {
  description = "Work topic, as bqdrain's --topic/--to takes it."
  value       = "pubsub://${google_pubsub_topic.work.id}"
}

output "work_subscription" {
  description = "Work subscription, as bqdrain work --subscription takes it."
  value       = local.work_subscription_uri
}

output "dead_letter_topic" {
  description = "Dead-letter topic."
  value       = "pubsub://${google_pubsub_topic.dead_letter.id}"
}

output "dead_letter_subscription" {
  description = "Dead-letter subscription, as bqdrain replay --from takes it."
  value       = local.dead_letter_subscription_uri
}

output "dead_letter_backlog_filter" {
  description = "Cloud Monitoring filter of the dead-letter backlog, for dashboards or other alerts."
  value       = local.dead_letter_backlog_filter
}

output "alert_policy" {
  description = "Alert policy on dead-lettered tables."
  value       = google_monitoring_alert_policy.dead_letters.name
}

output "alert_policies" {
  description = "Every alert policy, by what it watches."
  value = merge(
    {
      dead_letters      = google_monitoring_alert_policy.dead_letters.name
      failed_executions = google_monitoring_alert_policy.failed_executions.name
      work_backlog_age  = google_monitoring_alert_policy.work_backlog_age.name
      scheduler_errors  = google_monitoring_alert_policy.scheduler_errors.name
    },
    { for p in google_monitoring_alert_policy.producer_missed_run : "producer_missed_run" => p.name },
  )
}

output "alert_notification_warning" {
  description = "null when the alerts notify someone; otherwise says, loudly, that they notify nobody."
  value       = local.alerts_unrouted ? "WARNING: alert_notification_channels is empty: the bqdrain alert policies notify NOBODY. Set alert_notification_channels." : null
}

output "producer_job" {
  description = "Producer Cloud Run job."
  value       = google_cloud_run_v2_job.producer.id
}

output "worker_job" {
  description = "Worker Cloud Run job."
  value       = google_cloud_run_v2_job.worker.id
}

output "service_accounts" {
  description = "Service account of each role."
  value = {
    producer  = google_service_account.producer.email
    worker    = google_service_account.worker.email
    scheduler = google_service_account.scheduler.email
  }
}

output "run_now_command" {
  description = "Starts a run by hand."
  value       = "gcloud run jobs execute ${google_cloud_run_v2_job.producer.name} --project ${var.project_id} --region ${var.region} --wait"
}

output "replay_command" {
  description = "Sends dead-lettered tables back to the work topic (try --dry-run first)."
  value       = "bqdrain replay --from ${local.dead_letter_subscription_uri} --to pubsub://${google_pubsub_topic.work.id}"
}

output "status_command" {
  description = "Shows a run's progress; add --run-id RUN_ID (the producer logs it at each run)."
  value       = "bqdrain status --destination ${local.destination_uri}"
}

output "preflight_command" {
  description = "Runs the preflight (bqdrain-producer --check) as the producer's identity: its log lists each check, ok or missing with the fix."
  value       = local.preflight_command
}
