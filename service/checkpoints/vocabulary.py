"""The torch side of ``traind extend-vocab``: add tokens to the lineage of the settings.

The trainer is imported inside the function (``api/`` reaches it only through here, and
``traind --help`` stays fast). Everything a person can fix (no lineage yet, the daemon
holding it, a file half-trained, a bad tokens file) comes out as a :class:`VocabularyError`
whose message says what to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.config.settings import Settings
from trainer.vocab_file import TokensFileError, read_tokens_file


class VocabularyError(ValueError):
    """An extension that cannot be done now; the message says why and what to do."""


def extend_vocab(settings: Settings, *, tokens_file: Path) -> dict[str, Any] | None:
    """Add the tokens of ``tokens_file`` to the lineage under ``paths.checkpoints``; the
    ``vocab_extended`` event's fields, or None when the tokenizer had them all."""
    try:
        tokens = read_tokens_file(tokens_file)
    except TokensFileError as exc:
        raise VocabularyError(str(exc)) from None
    from trainer.adaptation import AdaptationError
    from trainer.extension import extend_vocabulary
    from trainer.hf_model import HfModelError
    from trainer.lineage import LineageError
    from trainer.lora import LoraError
    from trainer.opening import LineageLockedError
    from trainer.tokenizer import TokenizerError
    from trainer.vocab import VocabError

    try:
        return extend_vocabulary(
            tokens,
            spec=settings.lineage_spec(),
            train=settings.train_config(),
            paths=settings.run_paths(),
            export=settings.export_config(),
        )
    except (
        LineageError,
        LineageLockedError,
        AdaptationError,
        HfModelError,
        LoraError,
        TokenizerError,
        VocabError,
    ) as exc:
        raise VocabularyError(str(exc)) from None
