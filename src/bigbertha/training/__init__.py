"""The retraining loop's jobs: training data, fine-tuning, evaluation, the promotion gate and
the whole loop in one process. Imports core, documents, telemetry and models, never chat."""
