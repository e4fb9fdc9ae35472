# Both jobs run the same image: the producer job `bqdrain-producer`, the
# worker job `bqdrain work`. Settings reach the binaries as BQDRAIN_*
# variables, each the twin of a command-line flag.

locals {
  # Settings come to the producer in its environment, so --check alone
  # replaces the job's (empty) arguments.
  preflight_command = "gcloud run jobs execute ${google_cloud_run_v2_job.producer.name} --project=${var.project_id} --region=${var.region} --args=--check --wait"

  work_subscription_uri = "pubsub://${google_pubsub_subscription.work.id}"

  producer_env = merge(
    {
      BQDRAIN_SOURCE      = join(",", local.source_uris)
      BQDRAIN_TOPIC       = "pubsub://${google_pubsub_topic.work.id}"
      BQDRAIN_DESTINATION = local.destination_uri
      BQDRAIN_FORMAT      = var.export_format
      BQDRAIN_COMPRESSION = var.export_compression
      BQDRAIN_LOG_FORMAT  = "json"
    },
    length(var.include_tables) > 0 ? { BQDRAIN_INCLUDE = join(",", var.include_tables) } : {},
    length(var.exclude_tables) > 0 ? { BQDRAIN_EXCLUDE = join(",", var.exclude_tables) } : {},
    var.export_partitions ? { BQDRAIN_PARTITIONS = "true" } : {},
    var.only_changed ? { BQDRAIN_ONLY_CHANGED = "true" } : {},
    var.export_views ? { BQDRAIN_VIEWS = "true" } : {},
    var.max_bytes_billed != null ? { BQDRAIN_MAX_BYTES_BILLED = tostring(var.max_bytes_billed) } : {},
    var.duplicate_trigger_window_minutes > 0 ? { BQDRAIN_DUPLICATE_WINDOW = tostring(var.duplicate_trigger_window_minutes) } : {},
    local.launched_by_producer ? {
      BQDRAIN_LAUNCH_WORKERS = "projects/${var.project_id}/locations/${var.region}/jobs/${google_cloud_run_v2_job.worker.name}"
      BQDRAIN_MAX_TASKS      = tostring(var.max_tasks)
      BQDRAIN_UNITS_PER_TASK = tostring(var.units_per_task)
    } : {},
  )

  # The run id and destination come with each execution the producer
  # starts, so tasks exit once their run is complete; on a fixed worker
  # schedule they stop after an idle timeout instead.
  worker_env = {
    BQDRAIN_SUBSCRIPTION      = local.work_subscription_uri
    BQDRAIN_DEAD_LETTER_TOPIC = "pubsub://${google_pubsub_topic.dead_letter.id}"
    BQDRAIN_CONCURRENCY       = tostring(var.worker_concurrency)
    BQDRAIN_TASK_TIMEOUT      = tostring(var.worker_task_timeout_seconds)
    BQDRAIN_LOG_FORMAT        = "json"
  }
}

resource "google_cloud_run_v2_job" "producer" {
  project             = var.project_id
  location            = var.region
  name                = "${var.name_prefix}-producer"
  labels              = local.labels
  deletion_protection = var.deletion_protection

  template {
    task_count  = 1
    parallelism = 1

    template {
      service_account = google_service_account.producer.email
      timeout         = "${var.producer_task_timeout_seconds}s"
      max_retries     = var.producer_max_retries

      containers {
        image   = local.image
        command = ["bqdrain-producer"]

        resources {
          limits = {
            cpu    = var.producer_cpu
            memory = var.producer_memory
          }
        }

        dynamic "env" {
          for_each = local.producer_env
          content {
            name  = env.key
            value = env.value
          }
        }
      }
    }
  }

  depends_on = [google_project_service.required]
}

resource "google_cloud_run_v2_job" "worker" {
  project             = var.project_id
  location            = var.region
  name                = "${var.name_prefix}-worker"
  labels              = local.labels
  deletion_protection = var.deletion_protection

  template {
    # The producer overrides the task count at each run.
    task_count  = local.launched_by_producer ? 1 : var.worker_task_count
    parallelism = var.worker_parallelism

    template {
      service_account = google_service_account.worker.email
      timeout         = "${var.worker_task_timeout_seconds}s"
      max_retries     = var.worker_max_retries

      containers {
        image   = local.image
        command = ["bqdrain"]
        args    = ["work"]

        resources {
          limits = {
            cpu    = var.worker_cpu
            memory = var.worker_memory
          }
        }

        dynamic "env" {
          for_each = local.worker_env
          content {
            name  = env.key
            value = env.value
          }
        }
      }
    }
  }

  depends_on = [google_project_service.required]
}

# The preflight, run as the producer's own identity by executing its job
# with --check: it publishes, writes and retires nothing. Runs again when
# what the producer runs changes.
resource "terraform_data" "preflight" {
  count            = var.preflight_after_apply ? 1 : 0
  triggers_replace = [local.image, local.producer_env, google_cloud_run_v2_job.producer.id]

  provisioner "local-exec" {
    command = local.preflight_command
  }
}
