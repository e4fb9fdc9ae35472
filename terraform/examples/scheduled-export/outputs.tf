output "image_repository" {
  description = "Push the image here."
  value       = module.bqdrain.image_repository
}

output "destination_uri" {
  description = "Export root."
  value       = module.bqdrain.destination_uri
}

output "run_now_command" {
  description = "Starts a run by hand."
  value       = module.bqdrain.run_now_command
}

output "status_command" {
  description = "Shows a run's progress (add --run-id)."
  value       = module.bqdrain.status_command
}

output "replay_command" {
  description = "Sends dead-lettered tables back."
  value       = module.bqdrain.replay_command
}

output "dead_letter_subscription" {
  description = "Where dead-lettered tables wait."
  value       = module.bqdrain.dead_letter_subscription
}
