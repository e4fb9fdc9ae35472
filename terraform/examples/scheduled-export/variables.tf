variable "project_id" {
  type        = string
  description = "Project to deploy bqdrain into."
}

variable "region" {
  type        = string
  description = "Region of the jobs and the bucket; the dataset's region (or within its multi-region)."
}

variable "dataset_id" {
  type        = string
  description = "BigQuery dataset to export, in project_id."
}

variable "bucket_name" {
  type        = string
  description = "Export bucket to create (globally unique name)."
}

variable "schedule" {
  type        = string
  description = "Unix-cron schedule of the runs."
  default     = "0 3 * * *"
}

variable "time_zone" {
  type        = string
  description = "IANA time zone of the schedule."
  default     = "Etc/UTC"
}

variable "image" {
  type        = string
  description = "Image to run [default: bqdrain:latest in the repository the module creates]."
  default     = null
}

variable "alert_notification_channels" {
  type        = list(string)
  description = "Notification channels every alert notifies (dead letters, failed executions, missed runs, old work, scheduler errors); empty: nobody is told."
  default     = []
}
