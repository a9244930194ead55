"""The Streamlit chatbot UI (UI only: answering lives in rag.py).

`bigbertha chat` runs this file with Streamlit's server on chat.port, with the JSON API of
chat_api.py beside it. Every browser session and the API share one `RagEngine` (one model per
process, built in the background as the server starts); each session keeps its own history and
is one conversation (its id, kept in the session, decides which model answers during a canary).
Answers stream in as they are generated, with their sources underneath and a thumbs up/down
that is recorded for the model version that produced the answer. Degraded services show as
warnings on the answer and in the sidebar, never as a traceback.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from bigbertha.core.errors import BigberthaError
from bigbertha.core.settings import Settings

APP_TITLE = "BigBertha"


def serve(settings: Settings, *, host: str, config_file: Path | None) -> None:
    """Run the Streamlit server, with the JSON API beside the UI, until it is stopped.

    The server comes up at once; the engine (the model) is built in the background as it
    starts, so the champion watcher runs before any browser connects and /api/status says
    when answers can be served.
    """
    import streamlit as st

    from bigbertha.chat import api as chat_api
    from bigbertha.chat.limits import install_server_limits

    limits_config = install_server_limits(settings)
    if settings.chat.auth.enabled:  # Streamlit's st.login reads its provider from [auth]
        from bigbertha.chat.signon import streamlit_secrets

        limits_config["secrets.files"] = [str(streamlit_secrets(settings.chat.auth))]
    slot = chat_api.EngineSlot(settings)
    app = st.App(
        Path(__file__).resolve(),
        routes=chat_api.routes(slot),
        lifespan=chat_api.lifespan(slot),
    )
    # App.run() reads the script's argv from ours: the UI script sees `--config FILE`.
    sys.argv = [str(Path(__file__).resolve())]
    if config_file:
        sys.argv += ["--config", str(config_file)]
    app.run(
        config={
            "server.port": settings.chat.port,
            "server.address": host,
            "server.headless": True,
            "server.fileWatcherType": "none",
            "server.runOnSave": False,
            "browser.gatherUsageStats": False,
            "client.toolbarMode": "viewer",
            **limits_config,
        }
    )


def _config_file(argv: list[str]) -> Path | None:
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        return Path(argv[argv.index("--config") + 1])
    return None


def _sidebar(st: Any, engine: Any) -> None:
    status = engine.models.status()
    st.sidebar.title(APP_TITLE)
    st.sidebar.markdown(f"**Model version:** `{status.version}`")
    st.sidebar.caption(f"{status.ref} · swapped {status.swaps}×")
    canary = engine.router.canary()
    if canary is not None:
        st.sidebar.caption(
            f"Canary: version `{canary.version}` answers {canary.share:.0%} of conversations."
        )
    if status.loading:
        st.sidebar.info(f"Loading the new champion {status.loading} in the background…")
    if not status.registry_ok:
        st.sidebar.warning(
            f"Model registry unreachable ({status.registry_failures} failed checks): "
            "serving the current model."
        )
    elif status.last_error:
        st.sidebar.warning(status.last_error)
    if not engine.feedback.enabled:
        st.sidebar.caption("Feedback log and metrics are off (redis.url is not set).")
    elif not engine.feedback.available or engine.recorder.dropped:
        st.sidebar.warning(
            f"Redis unreachable: metrics and feedback are not kept "
            f"({engine.recorder.dropped} telemetry events dropped)."
        )
    settings = engine.settings
    st.sidebar.caption(
        f"collection `{settings.milvus.collection}` · top-k {settings.chat.top_k} · "
        f"cutoff {settings.chat.similarity_cutoff}"
    )


def _plain_markdown(text: str) -> str:
    """Chunk text shown as written: a '## Heading' inside a chunk must not become a heading."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|>~<])", r"\\\1", text)


def _person(engine: Any) -> str:
    """This user's pseudonym (chat/identity.py): of their sign-on subject, the same the API's
    bearer tokens give; without sign-on, of their address as the API names a client
    (X-Forwarded-For behind chat.trusted_proxies), so a new browser session is the same person."""
    import streamlit as st

    from bigbertha.chat.limits import client_of
    from bigbertha.chat.signon import subject

    auth = engine.settings.chat.auth
    if auth.enabled:
        return str(engine.person(subject(auth.issuer, str(st.user["sub"]))))

    client = client_of(
        st.context.ip_address,
        st.context.headers.get("X-Forwarded-For"),
        engine.settings.chat.trusted_proxies,
    )
    return str(engine.person(f"client:{client}"))


def _rate(engine: Any, answer: Any, key: str) -> None:
    import streamlit as st

    from bigbertha.chat.identity import PersonLimited

    value = st.session_state.get(key)
    if value is None:
        return
    rating = "up" if value == 1 else "down"
    try:
        stored: bool | str = engine.rate(answer, rating, _person(engine))
    except PersonLimited as exc:
        engine.recorder.record_refused(exc.reason)
        stored = f"Vote not counted: {exc}"
    st.session_state[f"{key}-stored"] = (rating, stored)


def _details(st: Any, engine: Any, answer: Any) -> None:
    """Warnings, sources, timing and the rating widget under one answer."""
    for text in answer.warnings.values():
        st.warning(text, icon="⚠️")
    if answer.error:
        st.error("The model failed on this answer; it was counted as an error.")
    if answer.sources:
        with st.expander(f"Sources ({len(answer.sources)})", expanded=True):
            for source in answer.sources:
                st.markdown(
                    f"**[{source.n}] {source.label}** · score `{source.score:.3f}`  \n"
                    f"<small>{source.document}</small>",
                    unsafe_allow_html=True,
                )
                st.caption(_plain_markdown(source.snippet))
    t = answer.timings
    st.caption(
        f"model {answer.model_version} · {t.total:.1f}s "
        f"(retrieval {t.retrieval * 1000:.0f} ms, generation {t.generation:.1f}s)"
    )
    key = f"rating-{answer.turn_id}"
    st.feedback("thumbs", key=key, on_change=_rate, args=(engine, answer, key))
    stored = st.session_state.get(f"{key}-stored")
    if stored is not None:
        rating, ok = stored
        if isinstance(ok, str):  # refused: over the person's votes of the hour
            st.warning(ok, icon="⚠️")
        elif ok:
            st.caption(f"Thanks: you rated this answer {rating} (model {answer.model_version}).")
        else:
            st.caption("Rating shown but not stored: Redis is unreachable.")


def main() -> None:
    import streamlit as st

    from bigbertha.chat.api import serving
    from bigbertha.chat.rag import shared_engine
    from bigbertha.chat.routing import new_conversation
    from bigbertha.core.settings import load

    st.set_page_config(page_title=APP_TITLE, page_icon="🤖")
    slot = serving()  # `bigbertha chat`: the engine its API answers with, same settings
    try:
        settings = slot.settings if slot else load(_config_file(sys.argv))
        if not _signed_in(st, settings):
            return
        with st.spinner("Loading the model…"):
            engine = slot.get() if slot else shared_engine(settings)
    except BigberthaError as exc:
        st.error(f"The chatbot cannot start: {exc}")
        st.stop()
        return
    st.title(f"{APP_TITLE} 🤖")
    st.caption("Answers come from your ingested documents, with their sources.")
    if not settings.chat.auth.enabled:
        st.info(
            "Sign-on is off (chat.auth.enabled: false): anyone who can reach this page can ask "
            "and vote, and votes decide retraining. Turn it on outside a local install.",
            icon="🔓",
        )

    history: list[Any] = st.session_state.setdefault("history", [])
    conversation: str = st.session_state.setdefault("conversation", new_conversation())
    for answer in history:
        with st.chat_message("user"):
            st.markdown(answer.question)
        with st.chat_message("assistant"):
            st.markdown(answer.text)
            _details(st, engine, answer)

    limit = engine.settings.chat.max_question_chars
    question = st.chat_input("Ask about your documents", max_chars=limit)
    if question and question.strip():
        _answer(st, engine, question, history, conversation)
    # Last, so it shows what this run learnt (a failed Redis write, a swapped model).
    _sidebar(st, engine)


def _signed_in(st: Any, settings: Settings) -> bool:
    """Whether this session may use the chatbot: with sign-on, only once signed in (else a
    sign-in page, and False); without, always."""
    if not settings.chat.auth.enabled or st.user.is_logged_in:
        if settings.chat.auth.enabled:
            st.sidebar.caption("Signed in.")
            st.sidebar.button("Sign out", on_click=st.logout)
        return True
    st.title(f"{APP_TITLE} 🤖")
    st.write("Sign in to ask about your documents and rate the answers.")
    st.button("Sign in", type="primary", on_click=st.login)
    return False


def _answer(st: Any, engine: Any, question: str, history: list[Any], conversation: str) -> None:
    """Answer one question of the session's conversation, or say in one line why it is
    refused."""
    from bigbertha.chat.limits import QueueFull, Refused

    # max_chars stops the browser's input box, and Streamlit's server cuts a longer value from a
    # client that ignores it; the engine still refuses control characters and surrogates.
    try:
        with engine.queue.admit():
            stream = engine.stream(question, conversation, _person(engine))
            with st.chat_message("user"):
                st.markdown(question)
            with st.chat_message("assistant"):
                st.write_stream(stream)
                answer = stream.result()
                history.append(answer)
                _details(st, engine, answer)
    except (Refused, QueueFull) as exc:
        engine.recorder.record_refused(exc.reason)
        st.warning(f"Not answered: {exc}", icon="⚠️")


if __name__ == "__main__":
    main()
