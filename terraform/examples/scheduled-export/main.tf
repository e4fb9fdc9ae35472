# A daily export of one dataset: the whole bqdrain system in one project.
# Copy terraform.tfvars.example to terraform.tfvars, fill it in, then
# follow the walkthrough in ../../README.md.

provider "google" {
  project = var.project_id
  region  = var.region
}

module "bqdrain" {
  source = "../.."

  project_id                  = var.project_id
  region                      = var.region
  dataset_id                  = var.dataset_id
  bucket_name                 = var.bucket_name
  schedule                    = var.schedule
  time_zone                   = var.time_zone
  image                       = var.image
  alert_notification_channels = var.alert_notification_channels
}
