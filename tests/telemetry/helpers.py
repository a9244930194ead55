"""What the telemetry tests share: a known mix of chat traffic recorded through the Recorder."""

from __future__ import annotations

from bigbertha.telemetry.recorder import Recorder


def record_traffic(recorder: Recorder, version: str) -> None:
    """One of each event the exporter turns into a metric, served by model `version`: three
    answers (0.3 s, 0.7 s, 3 s), one failed answer, a down vote, a failed retrain run and a
    promotion."""
    recorder.set_serving_model(version)
    for latency in (0.3, 0.7, 3.0):
        recorder.record_answer(
            version,
            latency_s=latency,
            ttft_s=0.1,
            prompt_tokens=100,
            completion_tokens=20,
            scores=[0.9, 0.4],
            context_chunks=2,
        )
    recorder.record_answer(
        version,
        latency_s=0.2,
        ttft_s=None,
        prompt_tokens=10,
        completion_tokens=0,
        scores=[],
        context_chunks=0,
        error=True,
    )
    recorder.record_feedback(version, "down")
    recorder.record_retrain_run("failed")
    recorder.record_promotion("promoted")
