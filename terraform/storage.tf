# The export bucket. Each run exports a table into its own folder
# (TABLE/run=RUN_ID/), and the worker deletes older runs' folders once the
# new export is committed, so the live objects are always the latest
# complete export of each table plus bqdrain's run records.
resource "google_storage_bucket" "exports" {
  project                     = var.project_id
  name                        = var.bucket_name
  location                    = local.bucket_location
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy
  labels                      = local.labels

  # A superseded export stays recoverable for a while after the worker
  # deletes it.
  versioning {
    enabled = true
  }

  # Soft delete, set deliberately: Cloud Storage's default keeps every
  # deleted object 7 more days, on top of the noncurrent versions above, and
  # BigQuery's export documentation advises turning it off on export buckets
  # (https://docs.cloud.google.com/bigquery/docs/exporting-data, "Export
  # limitations"). 0 turns it off; 7 to 90 days otherwise
  # (https://docs.cloud.google.com/storage/docs/soft-delete).
  soft_delete_policy {
    retention_duration_seconds = var.soft_delete_retention_days * 86400
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_retention_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  # Run manifests and completion records. The worker needs a run's manifest
  # to delete that run's folders once superseded, so keep them longer than
  # any table can go without a new export.
  lifecycle_rule {
    condition {
      age            = var.run_record_retention_days
      matches_prefix = [local.run_records_prefix]
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  # CMEK: new objects are encrypted with kms_key_name by default, by the
  # project's Cloud Storage service agent (granted on that key in iam.tf).
  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }

  depends_on = [
    google_project_service.required,
    google_kms_crypto_key_iam_member.storage_agent_uses_key,
  ]
}

# Holds the bqdrain image both jobs run.
resource "google_artifact_registry_repository" "images" {
  project       = var.project_id
  location      = var.region
  repository_id = var.artifact_repository_id
  description   = "bqdrain container images"
  format        = "DOCKER"
  labels        = local.labels

  # Cleanup (https://docs.cloud.google.com/artifact-registry/docs/repositories/cleanup-policy-overview:
  # a version matched by a delete and a keep policy is kept). Only untagged
  # versions older than 30 days are deleted: a tagged release is never
  # deleted, whatever its age; the image_keep_count most recent versions are
  # kept, tagged or not (a job updated to :latest runs the digest the tag
  # named then, which loses the tag at the next push); and the digest that
  # var.image pins is kept as long as the jobs reference it.
  cleanup_policies {
    id     = "delete-old-untagged"
    action = "DELETE"
    condition {
      tag_state  = "UNTAGGED"
      older_than = "2592000s"
    }
  }

  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = var.image_keep_count
    }
  }

  dynamic "cleanup_policies" {
    for_each = local.image_digest == null ? [] : [local.image_digest]
    content {
      id     = "keep-pinned-digest"
      action = "KEEP"
      condition {
        version_name_prefixes = [cleanup_policies.value]
      }
    }
  }

  depends_on = [google_project_service.required]
}
