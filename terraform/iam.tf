# One service account per role, each granted only what its job calls, on
# the narrowest resource that carries the permission. No basic or admin
# roles: the only project-level grants are the right to run BigQuery jobs,
# which BigQuery grants nowhere narrower: the worker's always, the
# producer's only when it runs queries.

resource "google_service_account" "producer" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-producer"
  display_name = "bqdrain producer"
  description  = "Lists the dataset's tables, publishes one work message per table, writes the run manifest."
}

resource "google_service_account" "worker" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-worker"
  display_name = "bqdrain worker"
  description  = "Drains the work subscription and exports each table to the bucket."
}

resource "google_service_account" "scheduler" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-scheduler"
  display_name = "bqdrain scheduler"
  description  = "Used by Cloud Scheduler to start the bqdrain jobs, and nothing else."
}

# --- producer -------------------------------------------------------------

# tables.list and tables.get for sizes and row counts.
resource "google_bigquery_dataset_iam_member" "producer_metadata" {
  project    = local.dataset_project_id
  dataset_id = var.dataset_id
  role       = "roles/bigquery.metadataViewer"
  member     = google_service_account.producer.member
}

resource "google_bigquery_dataset_iam_member" "producer_metadata_extra" {
  for_each = toset(var.extra_dataset_ids)

  project    = local.dataset_project_id
  dataset_id = each.value
  role       = "roles/bigquery.metadataViewer"
  member     = google_service_account.producer.member
}

# Every run is planned from one query of the dataset's INFORMATION_SCHEMA
# (tables, their rows and bytes); partitions, change markers and views' dry
# runs are queries too. jobs.create exists only at project level. Without
# it the producer falls back to one tables.get per table.
resource "google_project_iam_member" "producer_runs_queries" {
  project = local.dataset_project_id
  role    = "roles/bigquery.jobUser"
  member  = google_service_account.producer.member
}

resource "google_pubsub_topic_iam_member" "producer_publishes_work" {
  project = var.project_id
  topic   = google_pubsub_topic.work.name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.producer.member
}

# What bqdrain writes under the export prefix, and nothing else in the
# bucket: the run records; the current exports, which the producer lists to
# plan (--only-changed, gone sources, whole-table exports a window splits)
# and deletes where a run retires them (partitions gone from live tables,
# --prune-gone); and its claims beside the run records (which source a
# dataset's folder belongs to, a duplicate scheduler trigger). Listing is
# checked on the bucket itself, not on objects, so the bucket's own name is
# allowed too.
resource "google_storage_bucket_iam_member" "producer_export_prefix" {
  bucket = google_storage_bucket.exports.name
  role   = "roles/storage.objectUser"
  member = google_service_account.producer.member

  condition {
    title       = "bqdrain exports and records only"
    description = "Objects under the export prefix, and listing"
    expression  = "resource.name.startsWith(\"projects/_/buckets/${google_storage_bucket.exports.name}/objects/${var.export_prefix}\") || resource.name == \"projects/_/buckets/${google_storage_bucket.exports.name}\""
  }
}

# jobs.run with a task count and the run id as overrides.
resource "google_cloud_run_v2_job_iam_member" "producer_launches_workers" {
  count = local.launched_by_producer ? 1 : 0

  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_job.worker.name
  role     = "roles/run.jobsExecutorWithOverrides"
  member   = google_service_account.producer.member
}

# --- worker ---------------------------------------------------------------

# Reads table metadata and data for extract jobs (tables.export).
resource "google_bigquery_dataset_iam_member" "worker_reads_dataset" {
  project    = local.dataset_project_id
  dataset_id = var.dataset_id
  role       = "roles/bigquery.dataViewer"
  member     = google_service_account.worker.member
}

resource "google_bigquery_dataset_iam_member" "worker_reads_extra_datasets" {
  for_each = toset(var.extra_dataset_ids)

  project    = local.dataset_project_id
  dataset_id = each.value
  role       = "roles/bigquery.dataViewer"
  member     = google_service_account.worker.member
}

# A restore runs through the same workers and writes only into the datasets
# named for it: each table made from its exported definition, loaded by a
# load job (tables.create, tables.updateData), dropped first for --if-exists
# replace (tables.delete). Its load jobs run in the dataset's project
# (worker_runs_jobs) and read the exports' files (worker_writes_exports).
resource "google_bigquery_dataset_iam_member" "worker_restores_into" {
  for_each = toset(var.restore_datasets)

  project    = local.dataset_project_id
  dataset_id = each.value
  role       = "roles/bigquery.dataEditor"
  member     = google_service_account.worker.member
}

# jobs.create exists only at project level. The worker runs its extract
# jobs in the dataset's project.
resource "google_project_iam_member" "worker_runs_jobs" {
  project = local.dataset_project_id
  role    = "roles/bigquery.jobUser"
  member  = google_service_account.worker.member
}

# Extract jobs write as the worker; it also writes manifests and records,
# and deletes superseded exports.
resource "google_storage_bucket_iam_member" "worker_writes_exports" {
  bucket = google_storage_bucket.exports.name
  role   = "roles/storage.objectUser"
  member = google_service_account.worker.member
}

resource "google_pubsub_subscription_iam_member" "worker_consumes_work" {
  project      = var.project_id
  subscription = google_pubsub_subscription.work.name
  role         = "roles/pubsub.subscriber"
  member       = google_service_account.worker.member
}

# The worker reads the subscription's ack deadline and dead-letter policy
# at start (subscriptions.get is not in the subscriber role).
resource "google_pubsub_subscription_iam_member" "worker_reads_work_settings" {
  project      = var.project_id
  subscription = google_pubsub_subscription.work.name
  role         = "roles/pubsub.viewer"
  member       = google_service_account.worker.member
}

# Permanent failures are dead-lettered at once, with the reason.
resource "google_pubsub_topic_iam_member" "worker_publishes_dead_letters" {
  project = var.project_id
  topic   = google_pubsub_topic.dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.worker.member
}

# --- scheduler ------------------------------------------------------------

resource "google_cloud_run_v2_job_iam_member" "scheduler_starts_producer" {
  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_job.producer.name
  role     = "roles/run.invoker"
  member   = google_service_account.scheduler.member
}

resource "google_cloud_run_v2_job_iam_member" "scheduler_starts_workers" {
  count = local.launched_by_producer ? 0 : 1

  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_job.worker.name
  role     = "roles/run.invoker"
  member   = google_service_account.scheduler.member
}

# --- Pub/Sub service agent: dead-letter forwarding -------------------------

resource "google_pubsub_topic_iam_member" "pubsub_agent_publishes_dead_letters" {
  project = var.project_id
  topic   = google_pubsub_topic.dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "pubsub_agent_acks_forwarded" {
  project      = var.project_id
  subscription = google_pubsub_subscription.work.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

# --- Cloud Storage service agent: the bucket's CMEK key ----------------------

# The project's Cloud Storage service agent encrypts and decrypts the
# bucket's objects with kms_key_name
# (https://docs.cloud.google.com/storage/docs/encryption/using-customer-managed-keys);
# granted on that key only, and only when one is given.
data "google_storage_project_service_account" "this" {
  count = var.kms_key_name == null ? 0 : 1

  project = var.project_id
}

resource "google_kms_crypto_key_iam_member" "storage_agent_uses_key" {
  count = var.kms_key_name == null ? 0 : 1

  crypto_key_id = var.kms_key_name
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = "serviceAccount:${data.google_storage_project_service_account.this[0].email_address}"
}
