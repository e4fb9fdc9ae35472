# Warnings Terraform prints at plan and apply without stopping them (check
# blocks). They read only variables, so scripts/checks evaluates them with
# variables.tf alone (tests/test_terraform_validations.py).

# With worker_launch = "producer" a task is given about units_per_task units
# and exports worker_concurrency at a time: ceil(units_per_task /
# worker_concurrency) rounds. If each could be as long as the longest export,
# the task outlives its timeout: the units in flight go back, each at the cost
# of a delivery attempt. Not an error: most exports are shorter than the
# longest, and other tasks take their share of the queue.
check "worker_task_timeout_fits_a_share" {
  assert {
    condition     = var.worker_launch != "producer" || var.worker_task_timeout_seconds >= ceil(var.units_per_task / var.worker_concurrency) * var.longest_export_seconds + 300
    error_message = "worker_task_timeout_seconds (${var.worker_task_timeout_seconds}) is shorter than a task's share of the run could take: ceil(units_per_task / worker_concurrency) = ${ceil(var.units_per_task / var.worker_concurrency)} rounds of up to longest_export_seconds (${var.longest_export_seconds}) plus 300 s. A task killed at its timeout costs each unit it holds a delivery attempt. Raise worker_task_timeout_seconds, or lower units_per_task, or raise worker_concurrency."
  }
}

# Every alert policy notifies var.alert_notification_channels: with none, an
# incident opens in the console and nobody is told.
check "alerts_reach_someone" {
  assert {
    condition     = length(var.alert_notification_channels) > 0
    error_message = "alert_notification_channels is empty: the alert policies (dead letters, failed executions, missed runs, old work, scheduler errors) notify NOBODY. Add a channel: alert_notification_channels = [\"projects/PROJECT/notificationChannels/ID\"] (gcloud beta monitoring channels list)."
  }
}

# Cloud Scheduler reads a schedule in its time zone, daylight saving included
# (https://cloud.google.com/scheduler/docs/reference/rest/v1/projects.locations.jobs,
# timeZone). Where clocks change, they do so between 01:00 and 03:59 local
# time: a daily run there is skipped on the spring change day, or run twice on
# the autumn one. Only fixed hours are looked at (a number, or a comma list).
check "schedules_avoid_daylight_saving_changes" {
  assert {
    condition = contains(["UTC", "Etc/UTC", "Etc/GMT", "GMT"], var.time_zone) || !anytrue(flatten([
      for s in concat([var.schedule], var.worker_launch == "schedule" ? [var.worker_schedule] : []) : [
        for h in split(",", try(split(" ", trimspace(replace(s, "/\\s+/", " ")))[1], "")) :
        can(tonumber(h)) && try(tonumber(h) >= 1 && tonumber(h) <= 3, false)
      ]
    ]))
    error_message = "A schedule runs between 01:00 and 03:59 in ${var.time_zone}: if that time zone observes daylight saving, the run is skipped on the spring change day and run twice on the autumn one. Schedule it outside 01:00-03:59 local time, or set time_zone = \"Etc/UTC\"."
  }
}
