"""Recurring retraining: schedules in SQLite, a scheduler service, the retrain step that runs as
the Ray job, and Kubernetes renderings (RayCronJob, CronJob -> RayJob)."""
