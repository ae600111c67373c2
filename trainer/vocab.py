"""Vocabulary extension: new token rows that train while the old rows stay bit-frozen.

Zeroing the old rows' gradients with a hook is not enough: AdamW's decoupled weight decay
and the moments of earlier steps still move them (``tests/trainer/test_vocab.py``
measures the drift). So the rows are two parameters. Through ``torch.nn.utils.parametrize``
the input embedding's weight (and an untied output head's) becomes
``cat(base, new)``: ``base`` is the original parameter, cut to the rows the vocabulary
had, with ``requires_grad`` off; ``new`` (:class:`NewRows`) is a parameter of its own,
initialised as the mean of the base rows. A tied head registers the same parametrization,
so both share one ``new``. The optimizer holds ``base`` from the start (its parameter
groups never change), and a parameter without a gradient is skipped by AdamW entirely,
decay included: the base rows keep their bits until ``model.unfreeze_base_rows_at_step``
turns their gradient on. The module classes stay what they were (a scaled embedding keeps
its scale), since only their ``weight`` changes.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

ORIGINAL = ".parametrizations.weight.original"
"""State-dict name ending of a parametrized weight's base rows."""
ROWS = ".parametrizations.weight.0.rows"
"""State-dict name ending of its new rows."""


class VocabError(RuntimeError):
    """A vocabulary extension that cannot be applied; the message says what to do."""


class NewRows(nn.Module):
    """The parametrization ``weight = cat(base, rows)``: ``rows`` trains, ``base`` is the
    original parameter."""

    def __init__(self, rows: torch.Tensor) -> None:
        super().__init__()
        self.rows = nn.Parameter(rows)

    def forward(self, base: torch.Tensor) -> torch.Tensor:
        return torch.cat((base, self.rows), dim=0)


def token_modules(model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """The input embedding and the output head (None where there is none) of the built-in
    GPT or of a Hugging Face model (``model.hf``)."""
    inner = getattr(model, "hf", model)
    if hasattr(inner, "get_input_embeddings"):
        return inner.get_input_embeddings(), inner.get_output_embeddings()
    return model.wte, model.lm_head  # type: ignore[return-value]


def new_rows_of(module: nn.Module) -> NewRows | None:
    """The :class:`NewRows` of a module whose weight is extended, else None."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    found = [p for p in module.parametrizations.weight if isinstance(p, NewRows)]  # type: ignore[union-attr]
    return found[0] if found else None


def extended_modules(model: nn.Module) -> Iterator[tuple[nn.Module, NewRows]]:
    """Every module whose weight is extended, once each."""
    for module in model.modules():
        rows = new_rows_of(module)
        if rows is not None:
            yield module, rows


def base_row_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The base rows of every extended weight (a tied one once)."""
    seen: dict[int, nn.Parameter] = {}
    for module, _rows in extended_modules(model):
        original = module.parametrizations.weight.original  # type: ignore[union-attr]
        seen.setdefault(id(original), original)
    return list(seen.values())


def set_base_rows_trainable(model: nn.Module, trainable: bool) -> None:
    """Turn the base rows' gradient on (from ``unfreeze_base_rows_at_step``) or off."""
    for param in base_row_parameters(model):
        param.requires_grad_(trainable)


def extend_rows(model: nn.Module, *, base_rows: int, rows: int, fresh: tuple[int, int]) -> bool:
    """Give ``model`` ``rows`` embedding rows of which the first ``base_rows`` stay frozen
    and the rest train as a parameter of their own; rows ``fresh[0]`` to ``fresh[1]`` (the
    new tokens' ids) start as the mean of the base rows. Returns whether the head is tied.

    Rows a model has past its tokenizer's vocabulary (the padding some models carry to a
    friendly size) keep their values, among the trainable rows: new tokens take the first
    of them, so the embedding only grows when the padding runs out. On a model already
    extended the new-row parameter grows to ``rows``.
    """
    embedding, head = token_modules(model)
    current = new_rows_of(embedding)
    tied = head is not None and (
        new_rows_of(head) is current if current is not None else head.weight is embedding.weight
    )
    if head is not None and getattr(head, "bias", None) is not None:
        raise VocabError(
            "the output head has a bias; vocabulary extension supports bias-free heads"
        )
    if not base_rows <= fresh[0] <= fresh[1] <= rows:
        raise VocabError(f"new token rows {fresh} do not fit rows {base_rows}..{rows}")
    if current is None:
        if base_rows > embedding.weight.shape[0]:
            raise VocabError(
                f"the tokenizer has {base_rows} tokens but the embedding only "
                f"{embedding.weight.shape[0]} rows"
            )
        current = _split(embedding, base_rows=base_rows)
        if head is not None:
            if tied:
                _register(head, embedding.parametrizations.weight.original, current)  # type: ignore[union-attr]
            else:
                _split(head, base_rows=base_rows)
    for module in (embedding, None if tied else head):
        if module is not None:
            _fill(module, _required(new_rows_of(module)), rows=rows, fresh=fresh)
    _set_sizes(model, embedding, head, rows)
    return tied


def _split(module: nn.Module, *, base_rows: int) -> NewRows:
    """Make ``module.weight`` ``cat(base, rows)``: its first ``base_rows`` frozen, the rest
    (padding, if any) a parameter of their own."""
    weight = module.weight
    with torch.no_grad():
        rest = weight[base_rows:].detach().clone()
        original = (
            weight if weight.shape[0] == base_rows else nn.Parameter(weight[:base_rows].clone())
        )
    original.requires_grad_(False)
    new = NewRows(rest)
    _register(module, original, new)
    return new


def _register(module: nn.Module, original: nn.Parameter, new: NewRows) -> None:
    # unsafe: the parametrization changes the weight's shape, which parametrize otherwise forbids.
    if "weight" in module._parameters:
        del module._parameters["weight"]
    module.register_parameter("weight", original)
    parametrize.register_parametrization(module, "weight", new, unsafe=True)


def _fill(module: nn.Module, new: NewRows, *, rows: int, fresh: tuple[int, int]) -> None:
    """Grow ``new`` to ``rows`` in all and set the rows of ``fresh`` to the base mean."""
    original = module.parametrizations.weight.original  # type: ignore[union-attr]
    start = original.shape[0]
    with torch.no_grad():
        mean = original.mean(dim=0, keepdim=True).to(new.rows.dtype)
        grown = new.rows.detach()
        if start + grown.shape[0] < rows:
            grown = torch.cat((grown, mean.expand(rows - start - grown.shape[0], -1)), dim=0)
        grown = grown.clone()
        grown[fresh[0] - start : fresh[1] - start] = mean
    if grown.shape == new.rows.shape:
        with torch.no_grad():
            new.rows.copy_(grown)
    else:
        new.rows = nn.Parameter(grown)


def _required(rows: NewRows | None) -> NewRows:
    if rows is None:
        raise VocabError("the output head is untied but was not extended with the embedding")
    return rows


def _set_sizes(model: nn.Module, embedding: nn.Module, head: nn.Module | None, rows: int) -> None:
    """Keep the modules' and the Hugging Face config's sizes true to the new weight."""
    if hasattr(embedding, "num_embeddings"):
        embedding.num_embeddings = rows
    if head is not None and hasattr(head, "out_features"):
        head.out_features = rows
    hf_config = getattr(getattr(model, "hf", None), "config", None)
    if hf_config is not None:
        hf_config.vocab_size = rows
