"""Prompts of an exact token length, unique per request so that no prefix is accidentally reused.

The endpoint runner counts tokens through the server (its ``/tokenize`` route, or ``usage.prompt_tokens``
of a 1-token completion) and adjusts a text of random words until the count is exact. A text is what real
clients send; token-id prompts (``random_token_ids``) are the fallback for servers without a tokenizer route.
Words are random per seed, so two prompts share no leading block of tokens.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

from estimator.errors import BadResponse

CountTokens = Callable[[str], Awaitable[int]]

_SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["the", "and", "ing", "er", "on"]
# Short pieces that are one token for most tokenizers; each is tried until one adds exactly one token.
_FILLERS = (" a", " I", " x", " o", ".", ",", "!", " 1", "\n", " the", " and")


def random_words(rng: random.Random, n: int) -> list[str]:
    """``n`` pseudo-words, each with a leading space (the first one without)."""
    words = ["".join(rng.choices(_SYLLABLES, k=rng.randint(1, 3))) for _ in range(n)]
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def random_token_ids(rng: random.Random, n: int, id_range: tuple[int, int]) -> list[int]:
    """``n`` token ids drawn from ``[low, high)``; unique per seed from the first token on."""
    low, high = id_range
    return [rng.randrange(low, high) for _ in range(n)]


async def exact_text_prompt(
    count_tokens: CountTokens, num_tokens: int, seed: int, max_rounds: int = 60
) -> str:
    """A text that the server's tokenizer turns into exactly ``num_tokens`` tokens.

    Starts from a word count estimated at 1.5 tokens per word, then adds or drops words while far
    from the target and one-token fillers when close. Raises BadResponse if it cannot converge.
    """
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    rng = random.Random(seed)
    parts = random_words(rng, max(1, int(num_tokens / 1.5)))
    bad_fillers: set[str] = set()
    count = -1
    for _ in range(max_rounds):
        text = "".join(parts)
        count = await count_tokens(text) if text else 0
        if count == num_tokens:
            return text
        tokens_per_part = max(1.0, count / len(parts)) if parts else 1.5
        if count > num_tokens:
            last = parts.pop()
            if last in _FILLERS:
                bad_fillers.add(last)  # it added more than one token here
            else:
                surplus_parts = int((count - num_tokens) / tokens_per_part) - 1
                if surplus_parts > 0:
                    del parts[-surplus_parts:]
        elif num_tokens - count >= 4:
            n_new = max(1, int((num_tokens - count) / tokens_per_part * 0.8))
            parts += random_words(rng, n_new + 1)[1:]
        else:
            fillers = [f for f in _FILLERS if f not in bad_fillers]
            if not fillers:
                break
            parts.append(fillers[0])
    raise BadResponse(
        f"could not build a prompt of exactly {num_tokens} tokens (last try: {count}) with this tokenizer"
    )
