"""llama.cpp's own sampler chain for one reply: the logits never leave C.

The chain is the one llama-cpp-python's `Llama.generate` builds (repeat penalty over the last 64
generated tokens, then top-k, top-p, min-p, temperature and a seeded `dist`; temperature 0 is
greedy), with one change that keeps the result and drops most of the cost: the penalty sampler
looks every candidate up in a hash map, which over a 57002-token vocabulary takes a large part of
a millisecond. A repeat penalty >= 1 only lowers logits, and at most `PENALTY_LAST_N` distinct
tokens are penalized, so the top k after the penalty are always among the top k + 64 before it:
the chain keeps those first (a partial sort in C) and penalizes only them.

Every reply starts from a chain as new, with that reply's seed: a request without a seed gets a
fresh random one, never the seed of an earlier request. "As new" need not mean newly built:
`ReusedChain` keeps the last chain and resets it (llama.cpp re-seeds `dist` from the seed it was
built with, drawing a fresh one for the random seed, and forgets the penalty's history), because
a new chain's first sample page-faults its 684 KB candidate buffer in, ~0.1 ms on every reply.
"""

from __future__ import annotations

from typing import Any

from huozi_local.core.chat.types import SamplingOptions

PENALTY_LAST_N = 64  # llama-cpp-python's `last_n_tokens_size` default, which replies used so far
RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp draws a seed from the system


def chain_seed(seed: int | None) -> int:
    """The uint32 seed llama.cpp's `dist` sampler gets; None or negative means a random one."""
    if seed is None or seed < 0:
        return RANDOM_SEED
    return seed & 0xFFFFFFFF


class SamplerChain:
    """A `llama_sampler` chain; `sample` picks the next token from the context's last logits."""

    def __init__(self, options: SamplingOptions, seed: int | None, n_vocab: int) -> None:
        import llama_cpp

        self._lib = llama_cpp
        params = llama_cpp.llama_sampler_chain_default_params()
        params.no_perf = True
        self._chain: Any = llama_cpp.llama_sampler_chain_init(params)
        self.names: list[str] = []
        temperature = options.temperature
        penalize = options.repeat_penalty != 1.0
        keep = options.top_k if temperature > 0 else (1 if temperature == 0 else 0)
        if penalize and options.repeat_penalty > 1.0 and keep > 0:
            self._add("top_k", llama_cpp.llama_sampler_init_top_k(keep + PENALTY_LAST_N))
        if penalize:
            self._add(
                "penalties",
                llama_cpp.llama_sampler_init_penalties(
                    n_vocab, PENALTY_LAST_N, options.repeat_penalty, 0.0, 0.0
                ),
            )
        if temperature < 0:
            self._add("dist", llama_cpp.llama_sampler_init_dist(chain_seed(seed)))
        elif temperature == 0:
            self._add("greedy", llama_cpp.llama_sampler_init_greedy())
        else:
            if options.top_k > 0:
                self._add("top_k", llama_cpp.llama_sampler_init_top_k(options.top_k))
            self._add("top_p", llama_cpp.llama_sampler_init_top_p(options.top_p, 1))
            self._add("min_p", llama_cpp.llama_sampler_init_min_p(options.min_p, 1))
            self._add("temp", llama_cpp.llama_sampler_init_temp(temperature))
            self._add("dist", llama_cpp.llama_sampler_init_dist(chain_seed(seed)))

    def _add(self, name: str, sampler: Any) -> None:
        self._lib.llama_sampler_chain_add(self._chain, sampler)  # the chain owns it now
        self.names.append(name)

    def sample(self, ctx: Any) -> int:
        """The next token from the last logits of `ctx` (the chain also records it)."""
        return int(self._lib.llama_sampler_sample(self._chain, ctx, -1))

    def reset(self) -> None:
        """As built: `dist` re-seeded (a fresh seed when built with the random one), no history."""
        self._lib.llama_sampler_reset(self._chain)

    def close(self) -> None:
        if self._chain is not None:
            self._lib.llama_sampler_free(self._chain)
            self._chain = None

    def __enter__(self) -> SamplerChain:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class ReusedChain:
    """The chain for the next reply: the last one reset when its settings match, else a new one.

    Not thread-safe: the engine's lock serializes replies.
    """

    def __init__(self, n_vocab: int) -> None:
        self._n_vocab = n_vocab
        self._key: tuple[object, ...] | None = None
        self._chain: SamplerChain | None = None

    def get(self, options: SamplingOptions, seed: int | None) -> SamplerChain:
        key = (
            options.temperature,
            options.top_k,
            options.top_p,
            options.min_p,
            options.repeat_penalty,
            chain_seed(seed),
        )
        if self._chain is not None and key == self._key:
            self._chain.reset()
            return self._chain
        self.close()
        self._chain = SamplerChain(options, seed, self._n_vocab)
        self._key = key
        return self._chain

    def close(self) -> None:
        if self._chain is not None:
            self._chain.close()
            self._chain = None
            self._key = None
