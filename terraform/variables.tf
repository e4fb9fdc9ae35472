# --- where ----------------------------------------------------------------

variable "project_id" {
  type        = string
  description = "Project that runs bqdrain: jobs, queue, bucket, image repository."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID (6-30 lowercase letters, digits, hyphens), not its name or number."
  }
}

variable "region" {
  type        = string
  description = "Region of the Cloud Run jobs, the image repository and (by default) the bucket, e.g. europe-west1. Put the bucket where BigQuery may export the dataset: the dataset's region, or any region of its multi-region."

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a Google Cloud region such as europe-west1."
  }
}

variable "name_prefix" {
  type        = string
  description = "Prefix of every resource name (topics, subscriptions, jobs, service accounts); change it to run several bqdrain deployments in one project."
  default     = "bqdrain"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,18}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 2-20 lowercase letters, digits or hyphens, starting with a letter: service account IDs add up to 10 characters and allow 30."
  }
}

# --- what -----------------------------------------------------------------

variable "dataset_id" {
  type        = string
  description = "BigQuery dataset whose tables are exported (it must exist; bqdrain only reads it)."

  validation {
    condition     = can(regex("^[A-Za-z0-9_]+$", var.dataset_id)) && length(var.dataset_id) <= 1024
    error_message = "dataset_id must be letters, digits and underscores, e.g. analytics (not project:dataset)."
  }
}

variable "dataset_project_id" {
  type        = string
  description = "Project of the dataset, when it is not project_id."
  default     = null
}

variable "extra_dataset_ids" {
  type        = list(string)
  description = "More datasets of dataset_project_id exported in the same run, each into its own folder (units are then named DATASET.TABLE, and include/exclude globs may name DATASET.TABLE). Each must exist; the dataset names must differ."
  default     = []

  validation {
    condition     = alltrue([for d in var.extra_dataset_ids : can(regex("^[A-Za-z0-9_]+$", d)) && length(d) <= 1024])
    error_message = "extra_dataset_ids must be dataset ids: letters, digits and underscores (not project:dataset)."
  }
  validation {
    condition     = !contains(var.extra_dataset_ids, var.dataset_id) && length(distinct(var.extra_dataset_ids)) == length(var.extra_dataset_ids)
    error_message = "extra_dataset_ids must not repeat a dataset, nor name dataset_id again."
  }
}

variable "restore_datasets" {
  type        = list(string)
  description = "Datasets of dataset_project_id that `bqdrain restore --to bigquery://PROJECT/DATASET` may write into through the workers: the worker gets roles/bigquery.dataEditor on each (tables made from their definitions, loaded, dropped for --if-exists replace). Never an exported dataset: the worker only reads those; to restore into one, grant it yourself for the time of the restore."
  default     = []

  validation {
    condition     = alltrue([for d in var.restore_datasets : can(regex("^[A-Za-z0-9_]+$", d)) && length(d) <= 1024])
    error_message = "restore_datasets must be dataset ids: letters, digits and underscores (not project:dataset)."
  }
  validation {
    condition     = length(setintersection(var.restore_datasets, concat([var.dataset_id], var.extra_dataset_ids))) == 0 && length(distinct(var.restore_datasets)) == length(var.restore_datasets)
    error_message = "restore_datasets must not repeat a dataset, nor name an exported one (dataset_id, extra_dataset_ids): the worker only reads those."
  }
}

variable "export_partitions" {
  type        = bool
  description = "Export each partition of a partitioned table as its own unit (--partitions)."
  default     = false
}

variable "only_changed" {
  type        = bool
  description = "Export only the tables (and partitions) that changed since their last export (--only-changed)."
  default     = false
}

variable "duplicate_trigger_window_minutes" {
  type        = number
  description = "Cloud Scheduler delivers at least once, so a trigger can start a second execution: a new run of the same sources and options within this many minutes of another publishes nothing, logs the run it duplicates and exits 0 (--duplicate-window). Keep it below the schedule's interval; 0 turns the check off."
  default     = 30

  validation {
    condition     = var.duplicate_trigger_window_minutes >= 0 && floor(var.duplicate_trigger_window_minutes) == var.duplicate_trigger_window_minutes
    error_message = "duplicate_trigger_window_minutes must be a whole number of minutes, 0 or more (0 turns the check off)."
  }
}

variable "export_views" {
  type        = bool
  description = "Export views and materialized views too, through EXPORT DATA query jobs, which are billed (--views); the producer dry-runs each first (a dry run reads what the view reads: grant the producer bigquery.dataViewer on those tables, or the view is exported with its estimate unknown). The worker reads a view with its own grants: give it bigquery.dataViewer on the datasets the views read, or authorize the views."
  default     = false
}

variable "max_bytes_billed" {
  type        = number
  description = "With export_views: refuse a run whose views would process more bytes than this (dry run), and cap each view's export query at it (--max-bytes-billed). null: no cap."
  default     = null

  validation {
    condition     = var.max_bytes_billed == null || (var.export_views && coalesce(var.max_bytes_billed, 0) > 0)
    error_message = "max_bytes_billed must be a positive number of bytes, and needs export_views = true."
  }
}

variable "include_tables" {
  type        = list(string)
  description = "Export only tables matching these globs (all tables when empty)."
  default     = []
}

variable "exclude_tables" {
  type        = list(string)
  description = "Skip tables matching these globs."
  default     = []
}

variable "export_format" {
  type        = string
  description = "File format of the exports: csv, json, avro or parquet."
  default     = "csv"

  validation {
    condition     = contains(["csv", "json", "avro", "parquet"], var.export_format)
    error_message = "export_format must be one of csv, json, avro, parquet."
  }
}

variable "export_compression" {
  type        = string
  description = "Compression of the exports: none; gzip for csv and json; deflate or snappy for avro; snappy, gzip or zstd for parquet."
  default     = "none"

  validation {
    condition = contains(
      lookup({
        csv     = ["none", "gzip"]
        json    = ["none", "gzip"]
        avro    = ["none", "deflate", "snappy"]
        parquet = ["none", "snappy", "gzip", "zstd"]
      }, var.export_format, []),
      var.export_compression,
    )
    error_message = "export_compression does not go with export_format: gzip for csv/json; deflate, snappy for avro; snappy, gzip, zstd for parquet; or none."
  }
  validation {
    condition     = !(var.export_views && var.export_compression == "zstd")
    error_message = "export_views exports views with EXPORT DATA, which cannot write zstd: use snappy or gzip."
  }
}

# --- the bucket -----------------------------------------------------------

variable "bucket_name" {
  type        = string
  description = "Name of the export bucket this module creates (globally unique)."

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_.-]{1,61}[a-z0-9]$", var.bucket_name)) && !startswith(var.bucket_name, "goog")
    error_message = "bucket_name must be 3-63 lowercase letters, digits, '-', '_' or '.', start and end with a letter or digit, and not start with goog."
  }
}

variable "bucket_location" {
  type        = string
  description = "Location of the bucket [default: region]. For a dataset in the US or EU multi-region, US or EU also works."
  default     = null
}

variable "export_prefix" {
  type        = string
  description = "Folder of the bucket the exports go under, ending in '/', or empty for the bucket's root."
  default     = ""

  validation {
    condition     = var.export_prefix == "" || can(regex("^[^/].*/$", var.export_prefix))
    error_message = "export_prefix must be empty or a folder such as exports/ (no leading '/', a trailing '/')."
  }
}

variable "run_record_retention_days" {
  type        = number
  description = "Days bqdrain's run records (_bqdrain/runs/) are kept: status, the run report and replay read them. An export outlives them: its folder's _MANIFEST.json tells the worker it was committed, so a later run still replaces it (a manifest written before the run_started_at field existed still needs its run's manifest)."
  default     = 400

  validation {
    condition     = var.run_record_retention_days >= 1
    error_message = "run_record_retention_days must be at least 1."
  }
}

variable "noncurrent_retention_days" {
  type        = number
  description = "Days a superseded or overwritten object stays recoverable (as a noncurrent version) before it is deleted."
  default     = 7

  validation {
    condition     = var.noncurrent_retention_days >= 1
    error_message = "noncurrent_retention_days must be at least 1."
  }
}

variable "soft_delete_retention_days" {
  type        = number
  description = "Days Cloud Storage keeps a deleted object soft-deleted (restorable, billed at its storage class's rate), after versioning's noncurrent_retention_days: every superseded export is then stored noncurrent_retention_days + soft_delete_retention_days. 0 (default) turns soft delete off, as BigQuery advises for export buckets; otherwise 7 to 90 (Cloud Storage's limits). An organization policy (constraints/storage.softDeletePolicySeconds) may require a minimum: set it here."
  default     = 0

  validation {
    condition     = var.soft_delete_retention_days == 0 || (var.soft_delete_retention_days >= 7 && var.soft_delete_retention_days <= 90 && floor(var.soft_delete_retention_days) == var.soft_delete_retention_days)
    error_message = "soft_delete_retention_days must be 0 (soft delete off) or a whole number of days from 7 to 90 (Cloud Storage's limits)."
  }
}

variable "kms_key_name" {
  type        = string
  description = "Cloud KMS key (projects/P/locations/L/keyRings/R/cryptoKeys/K) the bucket encrypts new objects with by default (CMEK), in the bucket's location; the module grants the project's Cloud Storage service agent roles/cloudkms.cryptoKeyEncrypterDecrypter on that key only. null: Google-managed encryption."
  default     = null

  validation {
    condition     = var.kms_key_name == null ? true : can(regex("^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$", var.kms_key_name))
    error_message = "kms_key_name must be a crypto key ID: projects/PROJECT/locations/LOCATION/keyRings/RING/cryptoKeys/KEY."
  }
  # The key ring must be where the data is
  # (https://docs.cloud.google.com/storage/docs/encryption/using-customer-managed-keys).
  # Checked for a bucket in one region; a multi- or dual-region bucket's key
  # location is left to Cloud Storage.
  validation {
    condition     = var.kms_key_name == null ? true : !can(regex("^[a-z]+-[a-z]+[0-9]+$", lower(coalesce(var.bucket_location, var.region)))) || try(split("/", var.kms_key_name)[3], "") == lower(coalesce(var.bucket_location, var.region))
    error_message = "kms_key_name must be a key in the bucket's location (bucket_location, or region by default): Cloud Storage refuses a key from another location. Use a key ring in that region."
  }
}

variable "force_destroy" {
  type        = bool
  description = "Let terraform destroy delete the bucket with the exports in it."
  default     = false
}

variable "artifact_repository_id" {
  type        = string
  description = "Artifact Registry repository created for the bqdrain image."
  default     = "bqdrain"

  validation {
    condition     = can(regex("^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$", var.artifact_repository_id))
    error_message = "artifact_repository_id must be lowercase letters, digits and hyphens, starting with a letter (at most 63)."
  }
}

variable "image" {
  type        = string
  description = "Image both jobs run [default: REGION-docker.pkg.dev/PROJECT/REPOSITORY/bqdrain:latest]. A digest (…@sha256:…) pins a release, and the repository's cleanup policy keeps that digest."
  default     = null

  validation {
    condition     = var.image == null ? true : !strcontains(var.image, "@") || can(regex("@sha256:[0-9a-f]{64}$", var.image))
    error_message = "image must name a tag (…/bqdrain:TAG) or a full digest (…/bqdrain@sha256: and 64 hex digits)."
  }
}

variable "image_keep_count" {
  type        = number
  description = "Most recent image versions the repository's cleanup policy keeps, tagged or not. Only untagged versions older than 30 days are ever deleted, and never the digest image pins."
  default     = 10

  validation {
    condition     = var.image_keep_count >= 1 && floor(var.image_keep_count) == var.image_keep_count
    error_message = "image_keep_count must be a whole number of at least 1."
  }
}

# --- the work queue -------------------------------------------------------

variable "ack_deadline_seconds" {
  type        = number
  description = "Seconds a delivered message is reserved before redelivery. The worker extends it while an export runs, so this is how soon a crashed task's tables go to another task."
  default     = 60

  validation {
    condition     = var.ack_deadline_seconds >= 10 && var.ack_deadline_seconds <= 600
    error_message = "ack_deadline_seconds must be between 10 and 600 (Pub/Sub's limits)."
  }
}

variable "max_delivery_attempts" {
  type        = number
  description = "Deliveries of a message before Pub/Sub forwards it to the dead-letter topic."
  default     = 5

  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "max_delivery_attempts must be between 5 and 100 (Pub/Sub's limits)."
  }
}

variable "minimum_backoff_seconds" {
  type        = number
  description = "Shortest wait before Pub/Sub redelivers a message that was nacked or whose lease lapsed."
  default     = 10

  validation {
    condition     = var.minimum_backoff_seconds >= 0 && var.minimum_backoff_seconds <= 600 && var.minimum_backoff_seconds <= var.maximum_backoff_seconds
    error_message = "minimum_backoff_seconds must be between 0 and 600 and at most maximum_backoff_seconds."
  }
}

variable "maximum_backoff_seconds" {
  type        = number
  description = "Longest wait before a redelivery (the backoff grows exponentially up to it)."
  default     = 600

  validation {
    condition     = var.maximum_backoff_seconds >= 0 && var.maximum_backoff_seconds <= 600
    error_message = "maximum_backoff_seconds must be between 0 and 600 (Pub/Sub's limit)."
  }
}

variable "message_retention_seconds" {
  type        = number
  description = "Seconds an unacknowledged work message is kept. Keep it at least one schedule period, so a run that could not be drained is still there for the next workers."
  default     = 604800

  validation {
    condition     = var.message_retention_seconds >= 600 && var.message_retention_seconds <= 2678400
    error_message = "message_retention_seconds must be between 600 (10 minutes) and 2678400 (31 days)."
  }
}

variable "dead_letter_retention_seconds" {
  type        = number
  description = "Seconds a dead-lettered message is kept for replay."
  default     = 2678400

  validation {
    condition     = var.dead_letter_retention_seconds >= 600 && var.dead_letter_retention_seconds <= 2678400
    error_message = "dead_letter_retention_seconds must be between 600 (10 minutes) and 2678400 (31 days)."
  }
}

# --- when -----------------------------------------------------------------

variable "schedule" {
  type        = string
  description = "When a run starts: unix-cron, five fields (minute hour day-of-month month day-of-week), e.g. \"0 3 * * *\" for 03:00 daily."
  default     = "0 3 * * *"

  validation {
    condition     = can(regex("^\\s*(\\S+\\s+){4}\\S+\\s*$", var.schedule)) && alltrue([for f in split(" ", trimspace(replace(var.schedule, "/\\s+/", " "))) : can(regex("^(\\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?(,(\\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?)*$", f))])
    error_message = "schedule must be a unix-cron expression of five fields, e.g. \"0 3 * * *\"."
  }
}

variable "time_zone" {
  type        = string
  description = "IANA time zone the schedule is read in, e.g. Europe/Paris or Etc/UTC. Where clocks change for daylight saving, keep fixed run times outside 01:00-03:59 local time (a run there is skipped or doubled on change days; the plan warns)."
  default     = "Etc/UTC"

  validation {
    condition     = can(regex("^(UTC|[A-Z][A-Za-z_-]+(/[A-Za-z0-9_+-]+){1,2})$", var.time_zone))
    error_message = "time_zone must be an IANA time zone name such as Europe/Paris or Etc/UTC."
  }
}

variable "scheduler_region" {
  type        = string
  description = "Region of the Cloud Scheduler jobs [default: region], for regions Cloud Scheduler does not serve."
  default     = null
}

# --- workers --------------------------------------------------------------

variable "worker_launch" {
  type        = string
  description = "How worker tasks start: \"producer\" (the producer starts the worker job after publishing, with a task count that follows the tables published) or \"schedule\" (a second scheduler job starts worker_task_count tasks at worker_schedule)."
  default     = "producer"

  validation {
    condition     = contains(["producer", "schedule"], var.worker_launch)
    error_message = "worker_launch must be \"producer\" or \"schedule\"."
  }
}

variable "max_tasks" {
  type        = number
  description = "Most worker tasks the producer starts for one run (Cloud Run runs about 200 tasks of a 1 vCPU job at once and queues the rest)."
  default     = 100

  validation {
    condition     = var.max_tasks >= 1 && var.max_tasks <= 10000
    error_message = "max_tasks must be between 1 and 10000 (Cloud Run's task limit)."
  }
}

variable "units_per_task" {
  type        = number
  description = "Tables (units) per worker task when the producer computes the task count: ceil(units / units_per_task), at most max_tasks."
  default     = 8

  validation {
    condition     = var.units_per_task >= 1
    error_message = "units_per_task must be at least 1."
  }
}

variable "worker_schedule" {
  type        = string
  description = "With worker_launch = \"schedule\": when worker tasks start, unix-cron; a few minutes after schedule."
  default     = "10 3 * * *"

  validation {
    condition     = can(regex("^\\s*(\\S+\\s+){4}\\S+\\s*$", var.worker_schedule)) && alltrue([for f in split(" ", trimspace(replace(var.worker_schedule, "/\\s+/", " "))) : can(regex("^(\\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?(,(\\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?)*$", f))])
    error_message = "worker_schedule must be a unix-cron expression of five fields, e.g. \"10 3 * * *\"."
  }
}

variable "worker_task_count" {
  type        = number
  description = "With worker_launch = \"schedule\": worker tasks per execution."
  default     = 10

  validation {
    condition     = var.worker_task_count >= 1 && var.worker_task_count <= 10000
    error_message = "worker_task_count must be between 1 and 10000."
  }
}

variable "worker_parallelism" {
  type        = number
  description = "Most worker tasks running at once [default: as many as the task count, within quota]."
  default     = null

  validation {
    condition     = var.worker_parallelism == null ? true : var.worker_parallelism >= 1
    error_message = "worker_parallelism must be at least 1, or null."
  }
}

variable "worker_concurrency" {
  type        = number
  description = "Tables one worker task exports at once (each is a BigQuery extract job the task waits on)."
  default     = 4

  validation {
    condition     = var.worker_concurrency >= 1 && var.worker_concurrency <= 1000
    error_message = "worker_concurrency must be between 1 and 1000."
  }
}

variable "longest_export_seconds" {
  type        = number
  description = "Seconds the longest single export takes (one table's or partition's BigQuery extract job, or a view's EXPORT DATA query), with some headroom: the worker task timeout is sized and checked against it. Measure it in INFORMATION_SCHEMA.JOBS (see the README's \"Sizing the worker task timeout\"). The default assumes no export takes more than 25 minutes."
  default     = 1500

  validation {
    condition     = var.longest_export_seconds >= 1 && var.longest_export_seconds <= 604800
    error_message = "longest_export_seconds must be between 1 and 604800 seconds (a worker task runs at most 168 hours)."
  }
}

variable "worker_task_timeout_seconds" {
  type        = number
  description = "Longest a worker task runs (Cloud Run jobs allow up to 168 hours); also the longest it holds a message. A task killed at its timeout gives its units back, each at the cost of a delivery attempt, and a unit that never fits is dead-lettered after max_delivery_attempts while its BigQuery job succeeds: size it from longest_export_seconds (at least that plus 300 s; better, ceil(units_per_task / worker_concurrency) times it), and keep it within message_retention_seconds."
  default     = 3600

  validation {
    condition     = var.worker_task_timeout_seconds >= 60 && var.worker_task_timeout_seconds <= 604800
    error_message = "worker_task_timeout_seconds must be between 60 and 604800 (168 hours, Cloud Run's task timeout limit for jobs)."
  }
  validation {
    condition     = var.worker_task_timeout_seconds >= var.longest_export_seconds + 300
    error_message = "worker_task_timeout_seconds must be at least longest_export_seconds + 300: a task killed at its timeout gives its units back, each kill costs a delivery attempt, and a unit longer than the timeout is dead-lettered after max_delivery_attempts while its BigQuery job succeeds. Raise worker_task_timeout_seconds (up to 604800), or correct longest_export_seconds."
  }
  validation {
    condition     = var.worker_task_timeout_seconds <= var.message_retention_seconds
    error_message = "worker_task_timeout_seconds must not exceed message_retention_seconds: Pub/Sub drops an unacknowledged message older than the retention, even while a task holds it. Raise message_retention_seconds or lower the timeout."
  }
}

variable "worker_max_retries" {
  type        = number
  description = "Cloud Run restarts of a failed worker task (its tables are redelivered to other tasks anyway)."
  default     = 1

  validation {
    condition     = var.worker_max_retries >= 0 && var.worker_max_retries <= 10
    error_message = "worker_max_retries must be between 0 and 10."
  }
}

variable "worker_cpu" {
  type        = string
  description = "CPU limit of a worker task."
  default     = "1"

  validation {
    condition     = contains(["1", "2", "4", "6", "8"], var.worker_cpu)
    error_message = "worker_cpu must be one of 1, 2, 4, 6, 8."
  }
}

variable "worker_memory" {
  type        = string
  description = "Memory limit of a worker task (a worker holds tens of MiB), within Cloud Run's range for worker_cpu: 1 vCPU 512Mi-4Gi, 2 vCPU 512Mi-8Gi, 4 vCPU 2Gi-16Gi, 6 vCPU 4Gi-24Gi, 8 vCPU 4Gi-32Gi."
  default     = "512Mi"

  validation {
    condition     = can(regex("^[0-9]+(Mi|Gi)$", var.worker_memory))
    error_message = "worker_memory must be a quantity such as 512Mi or 1Gi."
  }
  # Cloud Run's memory range per CPU count, in MiB
  # (https://docs.cloud.google.com/run/docs/configuring/jobs/cpu, "vCPU and
  # memory table"), and at least 512 MiB for a job
  # (https://docs.cloud.google.com/run/docs/configuring/jobs/memory-limits).
  validation {
    condition = !can(regex("^[0-9]+(Mi|Gi)$", var.worker_memory)) || !contains(["1", "2", "4", "6", "8"], var.worker_cpu) || (
      try(tonumber(regex("^[0-9]+", var.worker_memory)) * (endswith(var.worker_memory, "Gi") ? 1024 : 1), 0) >= lookup({ "1" = 512, "2" = 512, "4" = 2048, "6" = 4096, "8" = 4096 }, var.worker_cpu, 0) &&
      try(tonumber(regex("^[0-9]+", var.worker_memory)) * (endswith(var.worker_memory, "Gi") ? 1024 : 1), 0) <= lookup({ "1" = 4096, "2" = 8192, "4" = 16384, "6" = 24576, "8" = 32768 }, var.worker_cpu, 0)
    )
    error_message = "worker_memory is outside what Cloud Run allows with worker_cpu: 1 vCPU takes 512Mi to 4Gi, 2 vCPU 512Mi to 8Gi, 4 vCPU 2Gi to 16Gi, 6 vCPU 4Gi to 24Gi, 8 vCPU 4Gi to 32Gi. Change worker_memory or worker_cpu."
  }
}

# --- producer -------------------------------------------------------------

variable "producer_task_timeout_seconds" {
  type        = number
  description = "Longest the producer runs (listing, publishing, starting workers); Cloud Run jobs allow up to 168 hours."
  default     = 600

  validation {
    condition     = var.producer_task_timeout_seconds >= 60 && var.producer_task_timeout_seconds <= 604800
    error_message = "producer_task_timeout_seconds must be between 60 and 604800 (168 hours, Cloud Run's task timeout limit for jobs)."
  }
}

variable "producer_max_retries" {
  type        = number
  description = "Cloud Run restarts of a failed producer task. A restart resumes the same run, it does not start another: the run id is the Cloud Run execution's name, which a retried task keeps, and the run's units without a completion record are published again only if the failed attempt had not finished publishing."
  default     = 1

  validation {
    condition     = var.producer_max_retries >= 0 && var.producer_max_retries <= 10
    error_message = "producer_max_retries must be between 0 and 10."
  }
}

variable "preflight_after_apply" {
  type        = bool
  description = "Run the preflight (bqdrain-producer --check: the permissions the producer holds, the subscription's dead-letter policy, the bucket's location and soft delete, the plan) once the jobs exist, and again whenever the producer's image or settings change: apply then executes the producer job with --args=--check and waits, and fails if a check fails. Needs gcloud, signed in, where Terraform runs."
  default     = false
}

variable "producer_cpu" {
  type        = string
  description = "CPU limit of the producer."
  default     = "1"

  validation {
    condition     = contains(["1", "2", "4", "6", "8"], var.producer_cpu)
    error_message = "producer_cpu must be one of 1, 2, 4, 6, 8."
  }
}

variable "producer_memory" {
  type        = string
  description = "Memory limit of the producer, within Cloud Run's range for producer_cpu: 1 vCPU 512Mi-4Gi, 2 vCPU 512Mi-8Gi, 4 vCPU 2Gi-16Gi, 6 vCPU 4Gi-24Gi, 8 vCPU 4Gi-32Gi."
  default     = "512Mi"

  validation {
    condition     = can(regex("^[0-9]+(Mi|Gi)$", var.producer_memory))
    error_message = "producer_memory must be a quantity such as 512Mi or 1Gi."
  }
  # Cloud Run's memory range per CPU count, in MiB
  # (https://docs.cloud.google.com/run/docs/configuring/jobs/cpu, "vCPU and
  # memory table"), and at least 512 MiB for a job
  # (https://docs.cloud.google.com/run/docs/configuring/jobs/memory-limits).
  validation {
    condition = !can(regex("^[0-9]+(Mi|Gi)$", var.producer_memory)) || !contains(["1", "2", "4", "6", "8"], var.producer_cpu) || (
      try(tonumber(regex("^[0-9]+", var.producer_memory)) * (endswith(var.producer_memory, "Gi") ? 1024 : 1), 0) >= lookup({ "1" = 512, "2" = 512, "4" = 2048, "6" = 4096, "8" = 4096 }, var.producer_cpu, 0) &&
      try(tonumber(regex("^[0-9]+", var.producer_memory)) * (endswith(var.producer_memory, "Gi") ? 1024 : 1), 0) <= lookup({ "1" = 4096, "2" = 8192, "4" = 16384, "6" = 24576, "8" = 32768 }, var.producer_cpu, 0)
    )
    error_message = "producer_memory is outside what Cloud Run allows with producer_cpu: 1 vCPU takes 512Mi to 4Gi, 2 vCPU 512Mi to 8Gi, 4 vCPU 2Gi to 16Gi, 6 vCPU 4Gi to 24Gi, 8 vCPU 4Gi to 32Gi. Change producer_memory or producer_cpu."
  }
}

# --- operations -----------------------------------------------------------

variable "alert_notification_channels" {
  type        = list(string)
  description = "Monitoring notification channel IDs (projects/P/notificationChannels/N) every alert policy notifies: dead letters, failed executions, a missed run, old work, scheduler errors. Leave it empty only knowingly: the policies then notify nobody, which the plan warns about and the output alert_notification_warning says."
  default     = []

  validation {
    condition     = alltrue([for c in var.alert_notification_channels : can(regex("^projects/[^/]+/notificationChannels/[^/]+$", c))])
    error_message = "alert_notification_channels must be notification channel IDs such as projects/my-project/notificationChannels/1234567890 (gcloud beta monitoring channels list --format='value(name)')."
  }
}

variable "alert_after_seconds" {
  type        = number
  description = "Seconds the dead-letter backlog stays above zero before the alert fires."
  default     = 300

  validation {
    condition     = var.alert_after_seconds >= 0 && var.alert_after_seconds % 60 == 0
    error_message = "alert_after_seconds must be a non-negative multiple of 60."
  }
}

variable "alert_renotify_seconds" {
  type        = number
  description = "Seconds between reminders of a metric-based incident still open (dead letters waiting, no successful run, old work): 86400 reminds daily; null sends none."
  default     = 86400

  validation {
    condition     = var.alert_renotify_seconds == null ? true : var.alert_renotify_seconds >= 60 && var.alert_renotify_seconds % 60 == 0
    error_message = "alert_renotify_seconds must be a positive multiple of 60 (whole minutes), or null for no reminders."
  }
}

variable "producer_missed_run_alert_seconds" {
  type        = number
  description = "Alert when the producer has not completed a run successfully for this long: the longest gap between two scheduled runs (daylight saving included) plus the producer's run time. The default, 93600 (26 h), suits a daily schedule; Cloud Monitoring allows up to 25 h of window plus a retest window, so at most 93600 here: null turns the alert off, as a schedule that skips days (weekdays, weekly) needs."
  default     = 93600

  validation {
    condition     = var.producer_missed_run_alert_seconds == null ? true : var.producer_missed_run_alert_seconds >= 3600 && var.producer_missed_run_alert_seconds <= 93600 && var.producer_missed_run_alert_seconds % 60 == 0
    error_message = "producer_missed_run_alert_seconds must be a multiple of 60 from 3600 to 93600 (25 h, Cloud Monitoring's longest alignment period for alerts, plus a 1 h retest window), or null to turn the alert off."
  }
  validation {
    condition     = var.producer_missed_run_alert_seconds == null ? true : var.producer_missed_run_alert_seconds >= var.producer_task_timeout_seconds + 60
    error_message = "producer_missed_run_alert_seconds must exceed producer_task_timeout_seconds: a run may take that long before it succeeds."
  }
  validation {
    condition     = var.producer_missed_run_alert_seconds == null ? true : try(alltrue([for f in slice(split(" ", trimspace(replace(var.schedule, "/\\s+/", " "))), 2, 5) : f == "*"]), true)
    error_message = "producer_missed_run_alert_seconds must be null with this schedule: it does not run every day (its day-of-month, month or day-of-week field is not *), so the gap between runs can exceed what the alert can cover (at most 26 h). Set producer_missed_run_alert_seconds = null and watch runs another way, or schedule a daily run."
  }
}

variable "work_backlog_alert_seconds" {
  type        = number
  description = "Alert when a work message has waited unacknowledged this long (the subscription's oldest_unacked_message_age): no worker drains the queue, or a run is far slower than sized [default: twice worker_task_timeout_seconds]."
  default     = null

  validation {
    condition     = var.work_backlog_alert_seconds == null ? true : var.work_backlog_alert_seconds >= 600
    error_message = "work_backlog_alert_seconds must be at least 600, or null for twice worker_task_timeout_seconds."
  }
}

variable "deletion_protection" {
  type        = bool
  description = "Refuse to delete the Cloud Run jobs on terraform destroy."
  default     = false
}

variable "labels" {
  type        = map(string)
  description = "Labels added to every resource that takes them."
  default     = {}
}
