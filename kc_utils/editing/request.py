"""What an edit asks for: a subject, a prompt and the new object, checked against the model.

An :class:`EditRequest` is plain data (``"iPhone is a product of"``, ``"iPhone"``, ``"Apple"`` → ``"Sony"``).
:func:`prepare_request` checks it against a model's tokenizer and returns a :class:`PreparedRequest` that
holds the token ids every method needs: the edit prompt, the subject's last position and the single
token of the new object. Every check raises :class:`EditError` naming the problem and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kc_utils import models
from kc_utils.analysis.lens import subject_positions

__all__ = ["EditError", "EditRequest", "PreparedRequest", "check_layer", "prepare_request", "single_token"]


class EditError(ValueError):
    """An edit that cannot be made as asked; the message says why and what to do instead."""


@dataclass(frozen=True)
class EditRequest:
    """One fact to rewrite.

    Attributes:
        prompt: the edit prompt, e.g. ``"iPhone is a product of"``.
        subject: the subject as written in the prompt, e.g. ``"iPhone"``.
        target_new: the object the model should answer after the edit, e.g. ``"Sony"``.
        target_true: the object it answers before (for reading results; may be empty).
        relation: the relation key the fact belongs to (for evaluation; may be empty).
    """

    prompt: str
    subject: str
    target_new: str
    target_true: str = ""
    relation: str = ""

    @classmethod
    def from_template(
        cls, template: str, subject: str, target_new: str, target_true: str = "", relation: str = ""
    ) -> EditRequest:
        """A request whose prompt is ``template`` (one ``{}``) with the subject written in.

        Raises:
            EditError: a template without exactly one ``{}``.
        """
        if template.count("{}") != 1:
            raise EditError(f"template {template!r} must contain exactly one '{{}}' where the subject goes")
        return cls(template.replace("{}", subject), subject, target_new, target_true, relation)

    def describe(self) -> str:
        """``iPhone is a product of: Apple -> Sony``."""
        return f"{self.prompt}: {self.target_true or '?'} -> {self.target_new}"


@dataclass(frozen=True)
class PreparedRequest:
    """A request checked against a model.

    Attributes:
        request: the request.
        tokens: token ids of the edit prompt, BOS included.
        subject_last: position of the subject's last token in ``tokens``.
        target: the single token id of ``" " + target_new`` after the prompt.
    """

    request: EditRequest
    tokens: tuple[int, ...]
    subject_last: int
    target: int


def check_layer(model: Any, layer: int) -> int:
    """``layer`` if it is an MLP layer of ``model``.

    Raises:
        EditError: a layer outside ``0 .. n_layers - 1``.
    """
    n_layers = models.model_shape(model).n_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise EditError(f"edit layer {layer!r} is out of range: this model has MLP layers 0..{n_layers - 1}")
    return layer


def single_token(model: Any, prompt: str, target: str) -> int:
    """The one token of ``" " + target`` after ``prompt``.

    Raises:
        EditError: when ``target`` is several tokens (or none) after ``prompt``.
    """
    prompt_ids = models.tokenize(model, [prompt], prepend_bos=False)[0]
    full_ids = models.tokenize(model, [prompt + " " + target], prepend_bos=False)[0]
    token = models.continuation_first_token(model, prompt, target)
    if token is None or len(full_ids) != len(prompt_ids) + 1:
        pieces = models.token_strings(model, full_ids[len(prompt_ids) :])
        raise EditError(
            f"the target {target!r} is {len(pieces)} tokens after {prompt!r} ({pieces}), but this edit needs a "
            "single-token target (the new object's token must be the model's top-1 answer). Pick an object "
            "that is one token in this tokenizer."
        )
    return token


def prepare_request(model: Any, request: EditRequest) -> PreparedRequest:
    """Check ``request`` against ``model`` and tokenise it.

    Raises:
        EditError: an empty subject, a subject that does not appear in the prompt, or a target that is not a
            single token.
    """
    if not request.subject.strip():
        raise EditError(f"empty subject in the request for prompt {request.prompt!r}")
    try:
        positions = subject_positions(model, request.prompt, request.subject)
    except ValueError as error:
        raise EditError(
            f"the subject {request.subject!r} is not in the edit prompt {request.prompt!r} ({error}); ROME and "
            "the location analysis need the subject's last token: write the subject into the template"
        ) from error
    tokens = models.tokenize(model, [request.prompt])[0]
    target = single_token(model, request.prompt, request.target_new)
    return PreparedRequest(request=request, tokens=tuple(tokens), subject_last=max(positions), target=target)
