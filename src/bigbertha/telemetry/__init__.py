"""What users and jobs report: the Redis recorder, the feedback log, the Prometheus exporter
and the Grafana dashboard. Imports only `bigbertha.core`."""
