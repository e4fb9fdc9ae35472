# bqdrain on Google Cloud: a scheduled producer job publishes one message per
# table to the work topic; worker job tasks drain the work subscription and
# export each table to the bucket; what keeps failing lands on the
# dead-letter topic. Resources are split by concern across this folder:
#   apis.tf        the services the system calls
#   storage.tf     the export bucket and the image repository
#   pubsub.tf      work and dead-letter topics and subscriptions
#   iam.tf         one service account per role, least privilege
#   run.tf         the producer and worker Cloud Run jobs
#   scheduler.tf   what starts a run
#   monitoring.tf  alerts: dead letters, failures, missed runs, old work
#   checks.tf      plan-time warnings (check blocks) on the variables

data "google_project" "this" {
  project_id = var.project_id
}

locals {
  dataset_project_id = coalesce(var.dataset_project_id, var.project_id)
  bucket_location    = coalesce(var.bucket_location, var.region)

  # The run records and manifests bqdrain keeps beside the exports
  # (see docs/destination.md, "The layout").
  run_records_prefix = "${var.export_prefix}_bqdrain/runs/"

  dataset_ids     = concat([var.dataset_id], var.extra_dataset_ids)
  source_uris     = [for d in local.dataset_ids : "bigquery://${local.dataset_project_id}/${d}"]
  destination_uri = "gs://${google_storage_bucket.exports.name}/${var.export_prefix}"

  # The digest var.image pins (…@sha256:HEX), kept by the repository's
  # cleanup policies; null for a tag.
  image_digest = try(regex("@(sha256:[0-9a-f]{64})$", coalesce(var.image, "-"))[0], null)

  image = coalesce(
    var.image,
    "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}/bqdrain:latest",
  )

  # Pub/Sub's own service agent forwards undeliverable messages to the
  # dead-letter topic; without its grants dead-lettering silently stops.
  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"

  launched_by_producer = var.worker_launch == "producer"

  labels = merge(var.labels, { "app" = "bqdrain" })
}
